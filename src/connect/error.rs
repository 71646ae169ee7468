//! The channel's error: at set-up (a configuration the channel cannot use) or a failure of a
//! running channel (a panicked task).

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Connect channel: {0}")]
    Setup(String),
    #[error("Connect channel failed: {0}")]
    Failed(String),
}
