//! The `local` backend's settings (`[storage.local]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub path: PathBuf,
}
