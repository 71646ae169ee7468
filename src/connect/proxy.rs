//! HTTP(S)_PROXY for the websocket: an HTTP `CONNECT` tunnel (what python-socks does for the
//! runner with an `http://` proxy). SOCKS proxies are not supported for the websocket (a warning
//! says so at start-up); REST calls go through reqwest, which honours the same variables itself.

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Proxy {
    /// For `wss://` (HTTPS_PROXY).
    https: Option<ProxyAddr>,
    /// For `ws://` (HTTP_PROXY).
    http: Option<ProxyAddr>,
    no_proxy: Vec<String>,
}

#[derive(Clone)]
struct ProxyAddr {
    host: String,
    port: u16,
    /// `Basic …` from the proxy URL's user info; never printed.
    auth: Option<String>,
}

impl std::fmt::Debug for ProxyAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn env_any(env: &impl Fn(&str) -> Option<String>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
}

fn parse(value: &str, var: &str) -> Option<ProxyAddr> {
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let url = match url::Url::parse(&with_scheme) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(variable = var, error = %e, "proxy setting is not a URL; ignored for the websocket");
            return None;
        }
    };
    if url.scheme() != "http" {
        tracing::warn!(
            variable = var,
            scheme = url.scheme(),
            "only http:// proxies (CONNECT) are supported for the websocket; connecting directly"
        );
        return None;
    }
    let auth = (!url.username().is_empty()).then(|| {
        let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy();
        let pass =
            percent_encoding::percent_decode_str(url.password().unwrap_or("")).decode_utf8_lossy();
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    });
    Some(ProxyAddr {
        host: url.host_str()?.trim_matches(['[', ']']).to_string(),
        port: url.port().unwrap_or(80),
        auth,
    })
}

impl Proxy {
    /// From HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case); `None` when no proxy is set.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Option<Proxy> {
        let https =
            env_any(&env, &["HTTPS_PROXY", "https_proxy"]).and_then(|v| parse(&v, "HTTPS_PROXY"));
        let http =
            env_any(&env, &["HTTP_PROXY", "http_proxy"]).and_then(|v| parse(&v, "HTTP_PROXY"));
        if https.is_none() && http.is_none() {
            return None;
        }
        let no_proxy = env_any(&env, &["NO_PROXY", "no_proxy"])
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        Some(Proxy {
            https,
            http,
            no_proxy,
        })
    }

    fn addr(&self, secure: bool) -> Option<&ProxyAddr> {
        if secure {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }
    }

    /// Whether connections to `host` go through the proxy (loopback and NO_PROXY hosts do not).
    pub fn applies_to(&self, host: &str, secure: bool) -> bool {
        let host = host.to_ascii_lowercase();
        if self.addr(secure).is_none()
            || host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        {
            return false;
        }
        !self
            .no_proxy
            .iter()
            .any(|n| n == "*" || host == *n || host.ends_with(&format!(".{n}")))
    }

    /// Opens a `CONNECT host:port` tunnel.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let p = self
            .addr(true)
            .or(self.addr(false))
            .expect("checked by applies_to");
        let mut tcp = TcpStream::connect((p.host.as_str(), p.port))
            .await
            .map_err(|e| format!("connecting to the proxy {}:{}: {e}", p.host, p.port))?;
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(a) = &p.auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("proxy CONNECT: {e}"))?;
        let mut buf = Vec::with_capacity(512);
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if buf.len() > 16 * 1024 {
                return Err("proxy CONNECT: answer headers too long".into());
            }
            let n = tcp
                .read(&mut byte)
                .await
                .map_err(|e| format!("proxy CONNECT: {e}"))?;
            if n == 0 {
                return Err("proxy closed the connection during CONNECT".into());
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf);
        let status_line = head.lines().next().unwrap_or("");
        let code = status_line.split_whitespace().nth(1).unwrap_or("");
        if code != "200" {
            return Err(format!("proxy refused CONNECT {target}: {status_line}"));
        }
        Ok(tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_parsing_and_bypass() {
        let p = Proxy::from_env(|k| match k {
            "HTTPS_PROXY" => Some("http://u:p%40ss@proxy.local:3128".into()),
            "NO_PROXY" => Some("internal.example, .corp".into()),
            _ => None,
        })
        .unwrap();
        assert!(p.applies_to("api.cnct.info", true));
        assert!(
            !p.applies_to("api.cnct.info", false),
            "no HTTP_PROXY for ws://"
        );
        assert!(!p.applies_to("127.0.0.1", true));
        assert!(!p.applies_to("x.internal.example", true));
        assert!(!p.applies_to("a.corp", true));
        assert!(!format!("{p:?}").contains("p@ss"));
        assert!(Proxy::from_env(|_| None).is_none());
        assert!(Proxy::from_env(|k| (k == "HTTPS_PROXY").then(|| "socks5://x:1".into())).is_none());
    }

    #[tokio::test]
    async fn connect_tunnel_through_a_proxy() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\nhello")
                .await
                .unwrap();
            req
        });
        let p = Proxy::from_env(|k| {
            (k == "HTTPS_PROXY").then(|| format!("http://a:b@127.0.0.1:{port}"))
        })
        .unwrap();
        let mut tcp = p.connect("api.example", 443).await.unwrap();
        let mut hello = [0u8; 5];
        tcp.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        let req = server.await.unwrap();
        assert!(
            req.starts_with("CONNECT api.example:443 HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("Proxy-Authorization: Basic YTpi\r\n"), "{req}");
    }
}
