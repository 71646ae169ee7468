//! What the outgoing HTTP clients (the Data API backend, the Connect REST calls) share about
//! trying again.

use std::time::{Duration, SystemTime};

/// The wait a `Retry-After` header asks for (delay-seconds or an HTTP date); `None` when absent
/// or unreadable.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}
