use super::*;

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
        endpoints(&s, "I").unwrap(),
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
        endpoints(&s, "I").unwrap(),
        (
            "ws://127.0.0.1:9000/public/v1/devops/ws/ENV-1/I".into(),
            "http://127.0.0.1:9001/public/v1/".into()
        )
    );
    let s = settings(&[("SERVER_ADDRESS", "h:1"), ("CONNECT_INSECURE", "true")]);
    let (ws, api) = endpoints(&s, "I").unwrap();
    assert!(ws.starts_with("ws://h:1/") && api == "http://h:1/public/v1/");
    let s = settings(&[("SERVER_ADDRESS", "ftp://h")]);
    assert!(endpoints(&s, "I")
        .unwrap_err()
        .to_string()
        .contains("SERVER_ADDRESS"));
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
