//! Who this daemon is to the platform: the instance id, the websocket and REST endpoints, the
//! `User-Agent` of the upgrade.

use super::ConnectError;
use crate::config::Settings;

/// The container id as the runner derives it (`/proc/1/cpuset`, else the overlay `upperdir`
/// in `/proc/self/mountinfo`), else a random UUID.
pub fn default_instance_id() -> String {
    fn hex64(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
    }
    if let Ok(cpuset) = std::fs::read_to_string("/proc/1/cpuset") {
        let last = cpuset.trim().rsplit('/').next().unwrap_or("");
        let last = last
            .trim_start_matches("docker-")
            .trim_end_matches(".scope");
        if hex64(last) {
            return last.to_string();
        }
    }
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines() {
            if let Some(pos) = line.find("upperdir=") {
                let rest = &line[pos + "upperdir=".len()..];
                let path = rest.split([',', ' ']).next().unwrap_or("");
                if let Some(id) = path.split('/').find(|p| hex64(p)) {
                    return id.to_string();
                }
            }
        }
    }
    uuid::Uuid::new_v4().to_string()
}

/// `(scheme, host[:port])` from an address that may carry a scheme.
fn split_scheme(addr: &str) -> (Option<&str>, &str) {
    match addr.split_once("://") {
        Some((s, rest)) => (Some(s), rest.trim_end_matches('/')),
        None => (None, addr.trim_end_matches('/')),
    }
}

/// The websocket base URL and the REST base URL (`…/public/v1/`) from the settings.
pub fn endpoints(settings: &Settings, instance_id: &str) -> Result<(String, String), ConnectError> {
    let c = &settings.connect;
    let (ws_scheme, ws_host) = split_scheme(c.server_address.trim());
    let ws_scheme = match ws_scheme {
        Some("ws") | Some("http") => "ws",
        Some("wss") | Some("https") => "wss",
        None if c.insecure => "ws",
        None => "wss",
        Some(other) => {
            return Err(ConnectError::Setup(format!(
                "SERVER_ADDRESS: scheme `{other}` is not accepted; accepted: wss://, ws://, or none (wss)"
            )))
        }
    };
    let api = if c.api_address.trim().is_empty() {
        ws_host.to_string()
    } else {
        c.api_address.trim().to_string()
    };
    let (api_scheme, api_host) = split_scheme(&api);
    let api_scheme = match api_scheme {
        Some("http") | Some("ws") => "http",
        Some("https") | Some("wss") => "https",
        None if c.insecure || (c.api_address.trim().is_empty() && ws_scheme == "ws") => "http",
        None => "https",
        Some(other) => {
            return Err(ConnectError::Setup(format!(
                "API_ADDRESS: scheme `{other}` is not accepted; accepted: https://, http://, or none (https)"
            )))
        }
    };
    Ok((
        format!(
            "{ws_scheme}://{ws_host}/public/v1/devops/ws/{}/{instance_id}",
            c.environment_id
        ),
        format!("{api_scheme}://{api_host}/public/v1/"),
    ))
}

/// The `User-Agent` of the websocket upgrade: this daemon, its version, the OS, the environment
/// and the instance.
pub(super) fn user_agent(environment_id: &str, instance_id: &str) -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "connect-extension-mongodb/{} Rust {}/{release} {environment_id}/{instance_id}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(target_os = "linux") {
            "Linux"
        } else {
            std::env::consts::OS
        },
    )
}
