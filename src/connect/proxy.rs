//! Proxies for the websocket and the Connect REST calls — one decision for both.
//!
//! | Case | Behaviour |
//! |---|---|
//! | `ws://` / `http://` target | HTTP_PROXY (or http_proxy), else ALL_PROXY (all_proxy) |
//! | `wss://` / `https://` target | HTTPS_PROXY (or https_proxy), else ALL_PROXY (all_proxy) |
//! | NO_PROXY (no_proxy) | comma/space separated: `*` (everything direct); host names, matching the host and its subdomains (a leading `.` or `*.` is ignored); IP addresses; CIDR blocks (`10.0.0.0/8`, `fd00::/8`); any of those with `:port` to match that port only. Loopback is proxied unless listed. |
//! | `http://` proxy | HTTP `CONNECT` tunnel for the websocket (what python-socks does for the runner); reqwest forwards plain `http://` REST calls and tunnels `https://` ones |
//! | `socks5://` / `socks5h://` proxy | SOCKS5 (tokio-socks for the websocket, reqwest's `socks` for REST): `socks5` resolves the target locally, `socks5h` lets the proxy resolve it |
//! | `user:password@` | Basic `Proxy-Authorization` (HTTP) or SOCKS5 username/password; percent-decoded |
//! | anything else (`https://`, `socks4://`, not a URL) | the daemon refuses to start, naming the variable — a configured proxy is never bypassed |
//!
//! The variables are read through a function (the process environment in production, a map in
//! tests). Proxy credentials are secrets: `Debug`, logs and errors show the proxy only through
//! [`crate::config::secret::redact_url`].

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The kind of proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    /// `remote_dns`: `socks5h` (the proxy resolves the target).
    Socks5 {
        remote_dns: bool,
    },
}

/// One configured proxy.
#[derive(Clone)]
pub struct ProxyUrl {
    scheme: Scheme,
    host: String,
    port: u16,
    /// Percent-decoded user name and password; never printed.
    user: Option<(String, String)>,
    /// The variable it came from (for messages).
    var: &'static str,
    /// The normalised URL, credentials included (handed to reqwest); never printed.
    url: String,
}

impl ProxyUrl {
    /// The proxy as logs may show it (credentials redacted).
    pub fn redacted(&self) -> String {
        crate::config::secret::redact_url(&self.url)
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from {})", self.redacted(), self.var)
    }
}

/// One NO_PROXY entry.
#[derive(Debug, Clone, PartialEq)]
enum NoProxyEntry {
    All,
    /// A host name: itself and its subdomains.
    Domain(String, Option<u16>),
    Ip(std::net::IpAddr, Option<u16>),
    Cidr(std::net::IpAddr, u8),
}

/// The proxy settings: which proxy (if any) a connection to a target uses.
#[derive(Debug, Clone)]
pub struct Proxy {
    http: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
    all: Option<ProxyUrl>,
    no_proxy: Vec<NoProxyEntry>,
}

fn env_any(
    env: &impl Fn(&str) -> Option<String>,
    names: [&'static str; 2],
) -> Option<(&'static str, String)> {
    names.into_iter().find_map(|n| {
        env(n)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| (n, v))
    })
}

fn parse(var: &'static str, value: &str) -> Result<ProxyUrl, String> {
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| {
        format!(
            "{var} is not a proxy URL ({e}): {}",
            crate::config::secret::redact_url(value)
        )
    })?;
    let scheme = match url.scheme() {
        "http" => Scheme::Http,
        "socks5" => Scheme::Socks5 { remote_dns: false },
        "socks5h" => Scheme::Socks5 { remote_dns: true },
        other => {
            return Err(format!(
                "{var}: `{other}://` proxies are not supported (use http://, socks5:// or socks5h://): {}",
                crate::config::secret::redact_url(value)
            ))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            format!(
                "{var} names no proxy host: {}",
                crate::config::secret::redact_url(value)
            )
        })?
        .trim_matches(['[', ']'])
        .to_string();
    let port = url.port().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Socks5 { .. } => 1080,
    });
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = (!url.username().is_empty())
        .then(|| (decode(url.username()), decode(url.password().unwrap_or(""))));
    Ok(ProxyUrl {
        scheme,
        host,
        port,
        user,
        var,
        url: with_scheme,
    })
}

fn parse_no_proxy(value: &str) -> Vec<NoProxyEntry> {
    value
        .split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|entry| {
            let e = entry.to_ascii_lowercase();
            if e == "*" {
                return Some(NoProxyEntry::All);
            }
            if let Some((ip, bits)) = e.split_once('/') {
                let ip: std::net::IpAddr = ip.trim_matches(['[', ']']).parse().ok()?;
                let bits: u8 = bits.parse().ok()?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                return (bits <= max).then_some(NoProxyEntry::Cidr(ip, bits));
            }
            if let Ok(ip) = e.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                return Some(NoProxyEntry::Ip(ip, None));
            }
            // `host:port`, `[v6]:port`.
            let (host, port) = match e.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                    (h.to_string(), Some(p.parse::<u16>().ok()?))
                }
                _ => (e.clone(), None),
            };
            let host = host.trim_matches(['[', ']']);
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                return Some(NoProxyEntry::Ip(ip, port));
            }
            let host = host
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.');
            (!host.is_empty()).then(|| NoProxyEntry::Domain(host.to_string(), port))
        })
        .collect()
}

fn in_cidr(ip: std::net::IpAddr, net: std::net::IpAddr, bits: u8) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (ip, net) {
        (V4(a), V4(b)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (V6(a), V6(b)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl Proxy {
    /// From HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY (upper case first, then lower case)
    /// as `env` answers them. `Ok(None)` when no proxy is set; an error naming the variable when
    /// one is set but cannot be used (the daemon must not then go direct).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Proxy>, String> {
        let get = |names: [&'static str; 2]| -> Result<Option<ProxyUrl>, String> {
            env_any(&env, names)
                .map(|(var, v)| parse(var, &v))
                .transpose()
        };
        let http = get(["HTTP_PROXY", "http_proxy"])?;
        let https = get(["HTTPS_PROXY", "https_proxy"])?;
        let all = get(["ALL_PROXY", "all_proxy"])?;
        if http.is_none() && https.is_none() && all.is_none() {
            return Ok(None);
        }
        let no_proxy = env_any(&env, ["NO_PROXY", "no_proxy"])
            .map(|(_, v)| parse_no_proxy(&v))
            .unwrap_or_default();
        Ok(Some(Proxy {
            http,
            https,
            all,
            no_proxy,
        }))
    }

    fn bypassed(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_matches(['[', ']'])
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<std::net::IpAddr>().ok();
        self.no_proxy.iter().any(|e| match e {
            NoProxyEntry::All => true,
            NoProxyEntry::Domain(d, p) => {
                p.is_none_or(|p| p == port) && (host == *d || host.ends_with(&format!(".{d}")))
            }
            NoProxyEntry::Ip(a, p) => p.is_none_or(|p| p == port) && ip == Some(*a),
            NoProxyEntry::Cidr(net, bits) => ip.is_some_and(|ip| in_cidr(ip, *net, *bits)),
        })
    }

    /// The proxy a connection to `host:port` uses (`secure`: `wss://`/`https://`); `None`: direct.
    pub fn for_target(&self, host: &str, port: u16, secure: bool) -> Option<&ProxyUrl> {
        let p = if secure { &self.https } else { &self.http };
        let p = p.as_ref().or(self.all.as_ref())?;
        (!self.bypassed(host, port)).then_some(p)
    }

    /// The same decisions for reqwest (a client built with `.no_proxy()` then `.proxy(…)`).
    pub fn for_reqwest(&self) -> reqwest::Proxy {
        let this = self.clone();
        reqwest::Proxy::custom(move |url| {
            let secure = url.scheme() == "https";
            let host = url.host_str()?;
            let port = url.port_or_known_default()?;
            this.for_target(host, port, secure).map(|p| p.url.clone())
        })
    }

    /// A TCP stream to `host:port`, through the proxy that applies (or direct).
    pub async fn open(&self, host: &str, port: u16, secure: bool) -> Result<TcpStream, String> {
        match self.for_target(host, port, secure) {
            None => TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("TCP connect to {host}:{port}: {e}")),
            Some(p) => p.open(host, port).await,
        }
    }
}

impl ProxyUrl {
    async fn open(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let shown = self.redacted();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to the proxy {shown} ({}): {e}", self.var))?;
        match self.scheme {
            Scheme::Http => self.connect_tunnel(tcp, host, port).await,
            Scheme::Socks5 { remote_dns } => {
                let target = if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                    tokio_socks::TargetAddr::Ip((ip, port).into())
                } else if remote_dns {
                    tokio_socks::TargetAddr::Domain(host.to_string().into(), port)
                } else {
                    let addr = tokio::net::lookup_host((host, port))
                        .await
                        .map_err(|e| format!("resolving {host} (for {shown}): {e}"))?
                        .next()
                        .ok_or_else(|| format!("resolving {host} (for {shown}): no address"))?;
                    tokio_socks::TargetAddr::Ip(addr)
                };
                let stream = match &self.user {
                    Some((u, p)) => {
                        tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                            tcp, target, u, p,
                        )
                        .await
                    }
                    None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, target).await,
                }
                .map_err(|e| {
                    format!("SOCKS5 proxy {shown} ({}) to {host}:{port}: {e}", self.var)
                })?;
                Ok(stream.into_inner())
            }
        }
    }

    /// `CONNECT host:port` through an HTTP proxy.
    async fn connect_tunnel(
        &self,
        mut tcp: TcpStream,
        host: &str,
        port: u16,
    ) -> Result<TcpStream, String> {
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((u, p)) = &self.user {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req.push_str(&format!("Proxy-Authorization: Basic {auth}\r\n"));
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
            return Err(format!(
                "proxy {} refused CONNECT {target}: {}",
                self.redacted(),
                crate::sanitize::escaped_excerpt(status_line, 200)
            ));
        }
        Ok(tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(vars: &[(&str, &str)]) -> Proxy {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Proxy::from_env(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn scheme_rules() {
        let p = proxy(&[("HTTPS_PROXY", "http://u:p%40ss@proxy.local:3128")]);
        assert!(p.for_target("api.cnct.info", 443, true).is_some());
        assert!(
            p.for_target("api.cnct.info", 80, false).is_none(),
            "no HTTP_PROXY for ws://"
        );
        let p = proxy(&[("HTTP_PROXY", "proxy.local:3128")]);
        assert!(p.for_target("api.cnct.info", 443, true).is_none());
        assert_eq!(p.for_target("a", 80, false).unwrap().port, 3128);
        let p = proxy(&[
            ("ALL_PROXY", "socks5h://s:1"),
            ("https_proxy", "http://h:2"),
        ]);
        assert_eq!(p.for_target("a", 443, true).unwrap().port, 2);
        assert_eq!(p.for_target("a", 80, false).unwrap().port, 1);
        assert_eq!(
            p.for_target("a", 80, false).unwrap().scheme,
            Scheme::Socks5 { remote_dns: true }
        );
        assert!(
            p.for_target("127.0.0.1", 80, false).is_some(),
            "loopback is proxied unless listed"
        );
        assert!(Proxy::from_env(|_| None).unwrap().is_none());
        assert!(
            Proxy::from_env(|k| (k == "HTTPS_PROXY").then(|| " ".into()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unusable_proxies_refuse_with_the_variable_named_and_no_secret() {
        for (var, value) in [
            ("HTTPS_PROXY", "https://u:TOPSECRET@p:1"),
            ("ALL_PROXY", "socks4://u:TOPSECRET@p:1"),
            ("HTTP_PROXY", "http://u:TOPSECRET@"),
        ] {
            let e = Proxy::from_env(|k| (k == var).then(|| value.to_string())).unwrap_err();
            assert!(e.contains(var), "{e}");
            assert!(!e.contains("TOPSECRET"), "{e}");
        }
    }

    #[test]
    fn no_proxy_like_curl() {
        let p = proxy(&[
            ("HTTPS_PROXY", "http://p:1"),
            (
                "NO_PROXY",
                "internal.example, .corp *.lan,10.0.0.0/8 192.168.1.7,api.x:8443,[::1],fd00::/8",
            ),
        ]);
        let direct = |h: &str, port: u16| p.for_target(h, port, true).is_none();
        assert!(direct("internal.example", 443));
        assert!(direct("x.internal.example", 443));
        assert!(!direct("notinternal.example", 443));
        assert!(direct("corp", 443) && direct("a.corp", 443));
        assert!(direct("b.lan", 443));
        assert!(direct("10.1.2.3", 443) && !direct("11.1.2.3", 443));
        assert!(direct("192.168.1.7", 443) && !direct("192.168.1.8", 443));
        assert!(direct("api.x", 8443) && !direct("api.x", 443));
        assert!(direct("::1", 443) && direct("[::1]", 443));
        assert!(direct("fd00::5", 443) && !direct("fe80::1", 443));
        assert!(!direct("api.cnct.info", 443));
        let all = proxy(&[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "*")]);
        assert!(all.for_target("anything", 443, true).is_none());
        assert!(!format!("{p:?}").contains("p@ss"));
        let secret = proxy(&[("HTTPS_PROXY", "http://user:TOPSECRET@p:1")]);
        assert!(!format!("{secret:?}").contains("TOPSECRET"));
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
        let p = proxy(&[("HTTPS_PROXY", &format!("http://a:b@127.0.0.1:{port}"))]);
        let mut tcp = p.open("api.example", 443, true).await.unwrap();
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
