//! Issue 9 item 8: proxies for the websocket and the Connect REST calls. An in-test HTTP CONNECT
//! proxy and an in-test SOCKS5 proxy (small tokio listeners below) record that they were used; the
//! fake platform sits behind them. The proxy variables are injected through
//! `Tuning::proxy_env` — the test process environment is never touched.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_extension_mongodb::connect::Tuning;
use connect_extension_mongodb::Settings;
use connect_extension_mongodb::{App, AppOptions};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What a test proxy saw: one line per connection it served.
#[derive(Default)]
struct Seen {
    /// HTTP proxy: the request line (`CONNECT h:p HTTP/1.1`, `GET http://… HTTP/1.1`);
    /// SOCKS5: `SOCKS5 <target>`.
    requests: Mutex<Vec<String>>,
    /// Proxy-Authorization values / SOCKS5 `user:password`.
    credentials: Mutex<Vec<String>>,
}

impl Seen {
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
    fn credentials(&self) -> Vec<String> {
        self.credentials.lock().unwrap().clone()
    }
}

async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.ok()? == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.push(b[0]);
    }
    Some(buf)
}

/// An HTTP proxy: `CONNECT` tunnels, and absolute-form requests forwarded as they are (the rest
/// of the connection is piped to the same origin).
async fn http_proxy() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&head).to_string();
                let line = text.lines().next().unwrap_or("").to_string();
                seen.requests.lock().unwrap().push(line.clone());
                if let Some(auth) = text.lines().find_map(|l| {
                    l.strip_prefix("Proxy-Authorization: ")
                        .or_else(|| l.strip_prefix("proxy-authorization: "))
                }) {
                    seen.credentials.lock().unwrap().push(auth.to_string());
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("");
                let target = parts.next().unwrap_or("");
                if method == "CONNECT" {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                } else {
                    let authority = target
                        .strip_prefix("http://")
                        .and_then(|r| r.split('/').next())
                        .unwrap_or("")
                        .to_string();
                    let Ok(mut upstream) = TcpStream::connect(authority).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = upstream.write_all(&head).await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, seen)
}

/// A SOCKS5 proxy (RFC 1928, username/password per RFC 1929 when offered).
async fn socks5_proxy() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let _ = socks5_serve(client, seen).await;
            });
        }
    });
    (addr, seen)
}

async fn socks5_serve(mut c: TcpStream, seen: Arc<Seen>) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    c.read_exact(&mut head).await?;
    let mut methods = vec![0u8; head[1] as usize];
    c.read_exact(&mut methods).await?;
    if methods.contains(&2) {
        c.write_all(&[5, 2]).await?;
        let mut v = [0u8; 2];
        c.read_exact(&mut v).await?;
        let mut user = vec![0u8; v[1] as usize];
        c.read_exact(&mut user).await?;
        let mut plen = [0u8; 1];
        c.read_exact(&mut plen).await?;
        let mut pass = vec![0u8; plen[0] as usize];
        c.read_exact(&mut pass).await?;
        seen.credentials.lock().unwrap().push(format!(
            "{}:{}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&pass)
        ));
        c.write_all(&[1, 0]).await?;
    } else {
        c.write_all(&[5, 0]).await?;
    }
    let mut req = [0u8; 4];
    c.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            c.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            c.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            c.read_exact(&mut name).await?;
            format!("domain:{}", String::from_utf8_lossy(&name))
        }
        _ => {
            let mut ip = [0u8; 16];
            c.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
    };
    let mut port = [0u8; 2];
    c.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    seen.requests
        .lock()
        .unwrap()
        .push(format!("SOCKS5 {host}:{port}"));
    let connect_to = host.trim_start_matches("domain:").to_string();
    let mut upstream = TcpStream::connect(format!("{connect_to}:{port}")).await?;
    c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut c, &mut upstream).await?;
    Ok(())
}

struct Daemon {
    platform: Arc<FakePlatform>,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), connect_extension_mongodb::AppError>>,
}

async fn build(proxy_env: &[(&str, &str)]) -> Result<Daemon, String> {
    capture_logs();
    let platform = FakePlatform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = env_for(&platform, &dir.path().join("data"));
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let settings = Settings::load_with(Some(&empty), move |k| env.get(k).cloned()).unwrap();
    let proxy_env: HashMap<String, String> = proxy_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let app = App::build_with(
        settings,
        AppOptions {
            registry_hook: None,
            connect_tuning: Tuning {
                proxy_env: Some(proxy_env),
                ..fast_tuning()
            },
            extension: None,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let run = tokio::spawn(app.run(stop.clone()));
    Ok(Daemon {
        platform,
        _dir: dir,
        stop,
        run,
    })
}

impl Daemon {
    /// Both channels set up, and one background task fetched over REST and answered `success`.
    async fn round_trip(&self) {
        let (mut bg, _ia) = self.platform.both_channels().await;
        self.platform
            .add_object(purchase_object("PR-PROXY-1", "pending"));
        bg.send(&background_task("TQ-PROXY-1", "PR-PROXY-1"));
        let r: Value = bg.recv_json().await;
        assert_eq!(r["data"]["output"]["result"], "success", "{r}");
    }
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.run).await;
    }
}

#[tokio::test]
async fn websocket_and_rest_go_through_an_http_connect_proxy() {
    let (proxy, seen) = http_proxy().await;
    let (other, other_seen) = http_proxy().await;
    let url = format!("http://proxy-user:proxy-pw-SECRET-8@{proxy}");
    // HTTPS_PROXY is for wss:// and https:// only; this platform is ws:// and http://.
    let d = build(&[
        ("HTTP_PROXY", &url),
        ("HTTPS_PROXY", &format!("http://{other}")),
    ])
    .await
    .unwrap();
    d.round_trip().await;
    assert!(
        other_seen.requests().is_empty(),
        "{:?}",
        other_seen.requests()
    );
    let ws = d.platform.ws_addr;
    let api = d.platform.http_addr;
    let requests = seen.requests();
    assert_eq!(
        requests
            .iter()
            .filter(|r| **r == format!("CONNECT {ws} HTTP/1.1"))
            .count(),
        2,
        "both channels through CONNECT: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("GET http://{api}/public/v1/requests"))),
        "REST through the proxy: {requests:?}"
    );
    // Basic cHJveHktdXNlcjpwcm94eS1wdy1TRUNSRVQtOA== = proxy-user:proxy-pw-SECRET-8
    assert!(seen
        .credentials()
        .iter()
        .all(|c| c == "Basic cHJveHktdXNlcjpwcm94eS1wdy1TRUNSRVQtOA=="));
    assert!(!seen.credentials().is_empty());
    d.stop().await;
    assert!(!log_text().contains("proxy-pw-SECRET-8"));
}

#[tokio::test]
async fn websocket_and_rest_go_through_a_socks5_proxy() {
    let (proxy, seen) = socks5_proxy().await;
    let url = format!("socks5h://sock-user:sock-pw-SECRET-9@{proxy}");
    // ALL_PROXY serves both ws:// and http:// when HTTP_PROXY is unset.
    let d = build(&[("ALL_PROXY", &url)]).await.unwrap();
    d.round_trip().await;
    let ws = d.platform.ws_addr;
    let api = d.platform.http_addr;
    let requests = seen.requests();
    assert_eq!(
        requests
            .iter()
            .filter(|r| **r == format!("SOCKS5 {ws}"))
            .count(),
        2,
        "both channels through SOCKS5: {requests:?}"
    );
    assert!(
        requests.contains(&format!("SOCKS5 {api}")),
        "REST through SOCKS5: {requests:?}"
    );
    assert!(seen
        .credentials()
        .iter()
        .all(|c| c == "sock-user:sock-pw-SECRET-9"));
    assert!(seen.credentials().len() >= 3);
    d.stop().await;
    assert!(!log_text().contains("sock-pw-SECRET-9"));
}

#[tokio::test]
async fn no_proxy_sends_everything_direct() {
    let (proxy, seen) = http_proxy().await;
    let (socks, socks_seen) = socks5_proxy().await;
    let d = build(&[
        ("HTTP_PROXY", &format!("http://{proxy}")),
        ("ALL_PROXY", &format!("socks5://{socks}")),
        ("NO_PROXY", "example.invalid, 127.0.0.0/8"),
    ])
    .await
    .unwrap();
    d.round_trip().await;
    assert!(seen.requests().is_empty(), "{:?}", seen.requests());
    assert!(socks_seen.requests().is_empty());
    d.stop().await;
}

#[tokio::test]
async fn ws_with_only_https_proxy_goes_direct() {
    let (proxy, seen) = http_proxy().await;
    let d = build(&[("HTTPS_PROXY", &format!("http://{proxy}"))])
        .await
        .unwrap();
    d.round_trip().await;
    assert!(
        seen.requests().is_empty(),
        "HTTPS_PROXY is for wss:// and https:// only: {:?}",
        seen.requests()
    );
    d.stop().await;
}

#[tokio::test]
async fn an_unusable_proxy_setting_refuses_to_start() {
    for (var, value) in [
        ("HTTPS_PROXY", "socks4://u:pw-SECRET-10@127.0.0.1:1"),
        ("ALL_PROXY", "https://u:pw-SECRET-10@127.0.0.1:1"),
    ] {
        let e = match build(&[(var, value)]).await {
            Ok(d) => {
                d.stop().await;
                panic!("{var}={value} was accepted");
            }
            Err(e) => e,
        };
        assert!(e.contains(var), "{e}");
        assert!(!e.contains("pw-SECRET-10"), "{e}");
    }
}
