//! The sender task: batches lines and posts them, retried, within the bounds.

use super::line::format_line;
use super::{global, Destination, Record, BATCH_MAX_BYTES, BATCH_MAX_LINES, RETRIES};
use crate::retry::Policy;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub(super) fn current_destination() -> Option<Arc<Destination>> {
    global().destination.lock().expect("ship lock").clone()
}

/// The sender task: batches and posts until every sender is gone.
pub(super) async fn sender(mut rx: mpsc::Receiver<Record>, flush: Duration) {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    // The channel's trust roots (system bundle plus SSL_CERT_FILE / SSL_CERT_DIR).
    if let Ok(tls) = crate::tls::client_config() {
        builder = builder.use_preconfigured_tls((*tls).clone());
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "platform logging off: cannot build its HTTP client");
            *global().tx.write().expect("ship lock") = None;
            return;
        }
    };
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let Some(dest) = current_destination() else {
            global()
                .queued_bytes
                .fetch_sub(first.size, Ordering::Relaxed);
            continue;
        };
        let deadline = tokio::time::Instant::now() + flush;
        let mut lines = vec![format_line(first, &dest)];
        let mut bytes = lines[0].len();
        let mut closed = false;
        while lines.len() < BATCH_MAX_LINES && bytes < BATCH_MAX_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => {
                    let l = format_line(r, &dest);
                    bytes += l.len() + 1;
                    lines.push(l);
                }
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let n = lines.len() as u64;
        match post(&client, &dest, lines.join("\n")).await {
            Ok(()) => {
                global().shipped.inc_by(n);
                if failing {
                    failing = false;
                    tracing::info!(url = %dest.shown(), "platform logging delivers again");
                }
            }
            Err(reason) => {
                global().dropped.inc_by(n);
                if !failing {
                    failing = true;
                    tracing::warn!(
                        url = %dest.shown(),
                        reason = %crate::sanitize::escape_control(&dest.scrubber.scrub(&reason)),
                        dropped = n,
                        "platform logging: a batch could not be delivered and was dropped (counted in connect_ext_log_records_dropped_total; logged once until delivery works again)"
                    );
                }
            }
        }
        if closed {
            return;
        }
    }
}

/// One batch, with bounded retries. The error never contains the endpoint (it holds the key).
pub(super) async fn post(
    client: &reqwest::Client,
    d: &Destination,
    body: String,
) -> Result<(), String> {
    let url = d.endpoint();
    // 250 ms, 500 ms, 1 s (doubling, capped at 5 s), no jitter.
    let mut waits = Policy::exponential(Duration::from_millis(250), Duration::from_secs(5))
        .with_max_retries(RETRIES as usize)
        .backoff();
    let last = loop {
        let sent = client
            .post(&url)
            .header("content-type", "text/plain")
            .body(body.clone())
            .timeout(d.options.timeout)
            .send()
            .await;
        let last = match sent {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let last = format!("HTTP {status}");
                if matches!(status, 400 | 401 | 403 | 413) {
                    return Err(format!("{last} (not retried)"));
                }
                last
            }
            Err(e) => {
                // Without the URL: reqwest's Display names it, and the URL carries the key.
                let e = e.without_url();
                if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    e.to_string()
                }
            }
        };
        match waits.next() {
            Some(wait) => tokio::time::sleep(wait).await,
            None => break last,
        }
    };
    Err(format!("{last} after {} attempts", RETRIES + 1))
}
