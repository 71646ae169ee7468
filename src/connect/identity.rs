//! Who this daemon is to the platform: the instance id, the websocket and REST endpoints, the
//! `User-Agent` of the upgrade.

use super::error::ConnectError;
use super::settings::Settings;
use url::Url;

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

/// The scheme written before `://`, if any (`h:1` has none: it is a host and a port).
fn explicit_scheme(addr: &str) -> Option<&str> {
    addr.split_once("://").map(|(scheme, _)| scheme)
}

/// `addr` parsed with `scheme`: the address's own scheme is replaced (the caller has mapped
/// it), a scheme-less address gets it. Trailing slashes of the path are dropped.
fn parse_with(setting: &str, addr: &str, scheme: &str) -> Result<Url, ConnectError> {
    let rest = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let mut url = Url::parse(&format!("{scheme}://{rest}")).map_err(|e| {
        ConnectError::Setup(format!("{setting}: `{addr}` is not a host or a URL: {e}"))
    })?;
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}

/// `url` with `segments` appended to its path (the path has no trailing slash).
fn joined(url: &Url, segments: &str) -> String {
    let mut url = url.clone();
    let path = format!("{}/{segments}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.into()
}

/// The websocket base URL and the REST base URL (`…/public/v1/`) from the settings.
///
/// `SERVER_ADDRESS` takes `wss://`, `ws://` (and `https://`, `http://` as their synonyms) or no
/// scheme (`wss`, `ws` with `CONNECT_INSECURE`). `API_ADDRESS` takes `https://`, `http://` (and
/// `wss://`, `ws://`) or no scheme (`https`; `http` with `CONNECT_INSECURE`, or when it is empty
/// and derived from a `ws` server address). A path in either address is kept as a prefix.
pub fn endpoints(settings: &Settings, instance_id: &str) -> Result<(String, String), ConnectError> {
    let c = settings;
    let server = c.server_address.trim();
    let ws_scheme = match explicit_scheme(server) {
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
    let ws = parse_with("SERVER_ADDRESS", server, ws_scheme)?;
    let api_address = c.api_address.trim();
    let derived = api_address.is_empty();
    let api_scheme = match explicit_scheme(api_address) {
        Some("http") | Some("ws") => "http",
        Some("https") | Some("wss") => "https",
        None if c.insecure || (derived && ws_scheme == "ws") => "http",
        None => "https",
        Some(other) => {
            return Err(ConnectError::Setup(format!(
                "API_ADDRESS: scheme `{other}` is not accepted; accepted: https://, http://, or none (https)"
            )))
        }
    };
    let api = if derived {
        // The server address without its scheme, under the REST scheme.
        let host_and_path = &ws.as_str()[ws.scheme().len() + "://".len()..];
        parse_with("SERVER_ADDRESS", host_and_path, api_scheme)?
    } else {
        parse_with("API_ADDRESS", api_address, api_scheme)?
    };
    Ok((
        joined(
            &ws,
            &format!("public/v1/devops/ws/{}/{instance_id}", c.environment_id),
        ),
        joined(&api, "public/v1/"),
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
