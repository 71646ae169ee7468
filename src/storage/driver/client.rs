//! One client per process (per runtime), rebuilt only when its settings change.

use std::sync::{Arc, Weak};
use std::time::Duration;

use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;
use mongodb::Client;

use super::errors::describe;
use super::settings::Settings as DriverSettings;
use super::uri::{scrub, Target};
use super::errors::BACKEND;
use crate::storage::error::StorageError;

#[derive(Clone, PartialEq, Eq)]
pub(super) struct ClientKey {
    pub(super) runtime: tokio::runtime::Id,
    pub(super) uri: String,
    pub(super) server_selection_timeout_ms: u64,
}

pub(super) struct ClientHandle {
    pub(super) client: Client,
}

pub(super) static CLIENTS: tokio::sync::Mutex<Vec<(ClientKey, Weak<ClientHandle>)>> =
    tokio::sync::Mutex::const_new(Vec::new());

/// When `handle` has no other user (no other backend holds it), takes it out of the cache — no
/// later `connect` can pick it up — and returns its client, to be shut down.
pub(super) async fn release_client(handle: &Arc<ClientHandle>) -> Option<Client> {
    let mut clients = CLIENTS.lock().await;
    if Arc::strong_count(handle) > 1 {
        return None;
    }
    let ours = Arc::downgrade(handle);
    clients.retain(|(_, weak)| weak.strong_count() > 0 && !weak.ptr_eq(&ours));
    Some(handle.client.clone())
}

pub(super) async fn shared_client(
    target: &Target,
    settings: &DriverSettings,
) -> Result<Arc<ClientHandle>, StorageError> {
    let key = ClientKey {
        runtime: tokio::runtime::Handle::current().id(),
        uri: target.uri.clone(),
        server_selection_timeout_ms: settings.server_selection_timeout_ms,
    };
    let mut clients = CLIENTS.lock().await;
    clients.retain(|(_, weak)| weak.strong_count() > 0);
    if let Some(handle) = clients
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(handle);
    }
    let mut options = ClientOptions::parse(&target.uri).await.map_err(|e| {
        let bad_uri = !matches!(e.kind.as_ref(), ErrorKind::DnsResolve { .. });
        let message = scrub(
            if bad_uri {
                format!(
                    "{}: {} is not a valid MongoDB connection string: {}",
                    target.setting,
                    target.shown(),
                    describe(&e)
                )
            } else {
                format!(
                    "{}: cannot resolve the cluster of {}: {}",
                    target.setting,
                    target.shown(),
                    describe(&e)
                )
            },
            &target.secrets,
        );
        if bad_uri {
            StorageError::config(BACKEND, message)
        } else {
            StorageError::unavailable(BACKEND, message)
        }
    })?;
    options.server_selection_timeout =
        Some(Duration::from_millis(settings.server_selection_timeout_ms));
    if options.app_name.is_none() {
        options.app_name = Some("connect-extension-mongodb".into());
    }
    let client = Client::with_options(options).map_err(|e| {
        StorageError::config(
            BACKEND,
            scrub(
                format!("{} {}: {}", target.setting, target.shown(), describe(&e)),
                &target.secrets,
            ),
        )
    })?;
    let handle = Arc::new(ClientHandle { client });
    clients.push((key, Arc::downgrade(&handle)));
    Ok(handle)
}
