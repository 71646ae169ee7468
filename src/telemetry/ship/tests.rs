use super::line::{clean, format_line, mask_api_keys};
use super::record::Collect;
use super::*;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::layer::{Context, Layer};

fn dest(scrubber: Arc<Scrubber>) -> Destination {
    let mut meta = Map::new();
    meta.insert("service_id".into(), Value::from("SRVC-1"));
    Destination {
        options: ShipOptions {
            url: "http://127.0.0.1:9/".into(),
            queue: 8,
            flush: Duration::from_millis(10),
            timeout: Duration::from_millis(100),
        },
        token: "logz-TOKEN-SECRET".into(),
        meta,
        extension_level: LevelFilter::INFO,
        runner_level: LevelFilter::INFO,
        scrubber,
    }
}

#[test]
fn lines_carry_the_runner_fields_and_no_secret() {
    let s = Arc::new(Scrubber::new());
    s.add("pw-KNOWN-SECRET");
    let d = dest(s);
    let r = Record {
        at: time::OffsetDateTime::now_utc(),
        level: Level::WARN,
        target: "connect_extension_mongodb::events::persist",
        file: Some("src/events/persist.rs"),
        line: Some(7),
        message: "saw pw-KNOWN-SECRET and Authorization: ApiKey SU-1:inst-SECRET in {\"api_key\": \"k-SECRET\"}".into(),
        fields: vec![
            ("token", Value::from("t-SECRET")),
            ("task_id", Value::from("TQ-1")),
            ("n", Value::from(3)),
            ("excerpt", Value::from("a\"pw-KNOWN-SECRET\"b")),
        ],
        size: 0,
    };
    let line = format_line(r, &d);
    assert!(!line.contains("SECRET"), "{line}");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["log_level"], "WARNING");
    assert_eq!(v["logger"], "connect_extension_mongodb::events::persist");
    assert_eq!(v["type"], "python");
    assert_eq!(v["task_id"], "TQ-1");
    assert_eq!(v["n"], 3);
    assert_eq!(v["token"], "***");
    assert_eq!(v["service_id"], "SRVC-1");
    assert_eq!(v["line_number"], 7);
    assert!(v["@timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_record_is_bounded_in_size() {
    let subscriber = tracing_subscriber::registry().with(Probe::default());
    let probe = subscriber.downcast_ref::<Probe>().unwrap().0.clone();
    tracing::subscriber::with_default(subscriber, || {
        let big = "x".repeat(1024 * 1024);
        tracing::info!(a = %big, b = %big, c = %big, d = %big, e = %big, "{big}");
    });
    let (bytes, fields) = *probe.lock().unwrap();
    assert!(bytes <= RECORD_MAX_BYTES + 4 * COLLECT_MAX_BYTES, "{bytes}");
    assert!(fields < 5, "{fields}");
}

/// Records what [`Collect`] kept of each event: (bytes, fields).
#[derive(Default)]
struct Probe(Arc<Mutex<(usize, usize)>>);
impl<S: Subscriber> Layer<S> for Probe {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut c = Collect::default();
        event.record(&mut c);
        *self.0.lock().unwrap() = (c.bytes, c.fields.len());
    }
}

#[test]
fn the_endpoint_is_shown_without_its_key() {
    let d = dest(Arc::new(Scrubber::new()));
    assert_eq!(
        d.endpoint(),
        "http://127.0.0.1:9/?token=logz%2DTOKEN%2DSECRET&type=python"
    );
    assert!(!d.shown().contains("SECRET"), "{}", d.shown());
    assert!(!format!("{d:?}").contains("SECRET"));
}

#[test]
fn python_level_names_map_to_filters() {
    assert_eq!(parse_level("DEBUG"), Some(LevelFilter::DEBUG));
    assert_eq!(parse_level("warning"), Some(LevelFilter::WARN));
    assert_eq!(parse_level("CRITICAL"), Some(LevelFilter::ERROR));
    assert_eq!(parse_level("NOTSET"), Some(LevelFilter::INFO));
    assert_eq!(parse_level("LOUD"), None);
    assert_eq!(mask_api_keys("x ApiKey SU-1:abc, y"), "x ApiKey ***, y");
    assert_eq!(mask_api_keys("apikey"), "apikey");
    let long = "é".repeat(10_000);
    assert!(clean(&long, &Scrubber::new()).len() <= SHIP_MAX_BYTES + '…'.len_utf8());
}
