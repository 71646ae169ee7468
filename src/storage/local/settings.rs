//! The `local` backend's settings (`[storage.local]`, documented in `default.toml` beside this file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::env::{var, EnvVar};
use crate::storage::backend::Section;

/// The variables that set `[storage.local]`.
pub const ENV: &[EnvVar] = &[var("LOCAL_DATA_DIR", "storage.local.path")];

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Settings {
    pub path: PathBuf,
}

impl Section for Settings {}
