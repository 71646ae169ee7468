use super::*;
use crate::Settings;

fn settings(vars: &[(&str, &str)]) -> Settings {
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load_with(None, move |k| map.get(k).cloned()).unwrap()
}

#[test]
fn endpoint_schemes() {
    let s = settings(&[("ENVIRONMENT_ID", "ENV-1"), ("API_KEY", "k")]);
    assert_eq!(
        endpoints(&s.connect, "I").unwrap(),
        (
            "wss://api.cnct.info/public/v1/devops/ws/ENV-1/I".into(),
            "https://api.cnct.info/public/v1/".into()
        )
    );
    let s = settings(&[
        ("ENVIRONMENT_ID", "ENV-1"),
        ("SERVER_ADDRESS", "ws://127.0.0.1:9000"),
        ("API_ADDRESS", "http://127.0.0.1:9001"),
    ]);
    assert_eq!(
        endpoints(&s.connect, "I").unwrap(),
        (
            "ws://127.0.0.1:9000/public/v1/devops/ws/ENV-1/I".into(),
            "http://127.0.0.1:9001/public/v1/".into()
        )
    );
    let s = settings(&[("SERVER_ADDRESS", "h:1"), ("CONNECT_INSECURE", "true")]);
    let (ws, api) = endpoints(&s.connect, "I").unwrap();
    assert!(ws.starts_with("ws://h:1/") && api == "http://h:1/public/v1/");
    let s = settings(&[("SERVER_ADDRESS", "ftp://h")]);
    assert!(endpoints(&s.connect, "I")
        .unwrap_err()
        .to_string()
        .contains("SERVER_ADDRESS"));
}

/// `(SERVER_ADDRESS, API_ADDRESS, CONNECT_INSECURE)` → `(websocket URL, REST base)`.
fn urls(server: &str, api: &str, insecure: bool) -> Result<(String, String), String> {
    let s = settings(&[
        ("ENVIRONMENT_ID", "ENV-1"),
        ("SERVER_ADDRESS", server),
        ("API_ADDRESS", api),
        ("CONNECT_INSECURE", if insecure { "true" } else { "false" }),
    ]);
    endpoints(&s.connect, "I").map_err(|e| e.to_string())
}

#[test]
fn endpoints_from_every_address_shape() {
    let ws = "/public/v1/devops/ws/ENV-1/I";
    let cases: &[(&str, &str, bool, &str, &str)] = &[
        // Scheme-less hosts: wss/https, or ws/http when insecure.
        (
            "api.cnct.info",
            "",
            false,
            "wss://api.cnct.info",
            "https://api.cnct.info",
        ),
        ("h", "", true, "ws://h", "http://h"),
        ("h:1", "", false, "wss://h:1", "https://h:1"),
        ("h:1", "a:2", true, "ws://h:1", "http://a:2"),
        // Trailing slashes are dropped.
        ("h/", "a//", false, "wss://h", "https://a"),
        (
            "wss://h:8443///",
            "https://a:8443/",
            false,
            "wss://h:8443",
            "https://a:8443",
        ),
        // ws/wss/http/https on either address, each mapped to its side.
        ("ws://h", "", false, "ws://h", "http://h"),
        ("wss://h", "", false, "wss://h", "https://h"),
        ("http://h:9000", "", false, "ws://h:9000", "http://h:9000"),
        ("https://h", "", false, "wss://h", "https://h"),
        ("ws://h", "https://a", false, "ws://h", "https://a"),
        ("wss://h", "ws://a:81", false, "wss://h", "http://a:81"),
        ("h", "wss://a", true, "ws://h", "https://a"),
        (
            "ws://127.0.0.1:9000",
            "http://127.0.0.1:9001",
            false,
            "ws://127.0.0.1:9000",
            "http://127.0.0.1:9001",
        ),
        // IPv6 literals.
        (
            "[::1]:9000",
            "",
            true,
            "ws://[::1]:9000",
            "http://[::1]:9000",
        ),
        (
            "wss://[2001:db8::7]",
            "http://[::1]:81",
            false,
            "wss://[2001:db8::7]",
            "http://[::1]:81",
        ),
        // Paths are kept as a prefix.
        (
            "h/connect",
            "",
            false,
            "wss://h/connect",
            "https://h/connect",
        ),
        (
            "ws://h:1/a/b/",
            "http://a/rest/",
            false,
            "ws://h:1/a/b",
            "http://a/rest",
        ),
    ];
    for (server, api, insecure, want_ws, want_api) in cases {
        assert_eq!(
            urls(server, api, *insecure),
            Ok((format!("{want_ws}{ws}"), format!("{want_api}/public/v1/"))),
            "SERVER_ADDRESS={server:?} API_ADDRESS={api:?} insecure={insecure}"
        );
    }
}

#[test]
fn endpoints_refuse_other_schemes_and_unreadable_addresses() {
    for (server, api, names) in [
        (
            "ftp://h",
            "",
            "SERVER_ADDRESS: scheme `ftp` is not accepted",
        ),
        (
            "WSS://h",
            "",
            "SERVER_ADDRESS: scheme `WSS` is not accepted",
        ),
        ("h", "ftp://a", "API_ADDRESS: scheme `ftp` is not accepted"),
        (
            "h:99999",
            "",
            "SERVER_ADDRESS: `h:99999` is not a host or a URL",
        ),
        (
            "wss://",
            "",
            "SERVER_ADDRESS: `wss://` is not a host or a URL",
        ),
        (
            "h",
            "http://a:x",
            "API_ADDRESS: `http://a:x` is not a host or a URL",
        ),
    ] {
        let err = urls(server, api, false).unwrap_err();
        assert!(err.contains(names), "{server:?} {api:?}: {err}");
    }
}

fn status(runner_type: RunnerType) -> Arc<ChannelStatus> {
    Arc::new(ChannelStatus::new(runner_type))
}

/// A panicked channel task is a failure: the other channel is stopped, both statuses say
/// why, and the result is an error (the daemon exits non-zero).
#[tokio::test]
async fn a_panicked_channel_stops_the_other_and_is_an_error() {
    let stop = CancellationToken::new();
    let (bg, ia) = (
        status(RunnerType::Background),
        status(RunnerType::Interactive),
    );
    ia.set_ready_for_test();
    let waiting = {
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            false
        })
    };
    let panicking = tokio::spawn(async {
        tokio::task::yield_now().await;
        panic!("channel blew up");
    });
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        supervise(
            vec![(bg.clone(), panicking), (ia.clone(), waiting)],
            stop.clone(),
        ),
    )
    .await
    .expect("supervise must not wait for the healthy channel forever");
    let e = r.unwrap_err().to_string();
    assert!(e.contains("background channel task panicked"), "{e}");
    assert!(stop.is_cancelled());
    assert!(!bg.is_ready());
    assert!(bg.problem().contains("panicked"), "{}", bg.problem());
    // Two clean ends: the platform's shutdown on both → Ok(true).
    let done = |v: bool| tokio::spawn(async move { v });
    let r = supervise(
        vec![
            (status(RunnerType::Background), done(true)),
            (status(RunnerType::Interactive), done(true)),
        ],
        CancellationToken::new(),
    )
    .await;
    assert!(r.unwrap());
}

#[test]
fn instance_id_is_stable_or_uuid() {
    let a = default_instance_id();
    assert!(a.len() == 64 || a.len() == 36, "{a}");
}
