//! Making frames safe to log: known secret values are masked wherever they appear, and the string
//! value of any secret-looking JSON key (`api_key`, `password`, `value`, …) is masked even when the
//! frame is not valid JSON. Only then is the excerpt cut to [`EXCERPT_BYTES`], and its control
//! characters escaped (a newline in a frame must not forge a log line, nor ANSI escapes or NUL
//! bytes reach the terminal: [`crate::sanitize::escaped_excerpt`]).

use std::sync::RwLock;

/// How much of a skipped frame is logged.
pub const EXCERPT_BYTES: usize = 200;

/// JSON keys whose string values are never logged.
const SECRET_KEYS: &[&str] = &[
    "api_key",
    "logging_api_key",
    "password",
    "value",
    "initial_value",
    "token",
    "secret",
    "authorization",
];

/// Secret values known to this process (configured keys, secure variables from the platform).
#[derive(Debug, Default)]
pub struct Scrubber {
    known: RwLock<Vec<String>>,
}

impl Scrubber {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers `value` as a secret (ignored when too short to be one).
    pub fn add(&self, value: &str) {
        if value.len() < 4 {
            return;
        }
        let mut known = self.known.write().expect("scrubber lock");
        if !known.iter().any(|k| k == value) {
            known.push(value.to_string());
            // Longest first, so a secret containing another is masked whole.
            known.sort_by_key(|k| std::cmp::Reverse(k.len()));
        }
    }

    /// `text` with every secret masked, cut to [`EXCERPT_BYTES`] (on a character boundary), control
    /// characters escaped.
    pub fn excerpt(&self, text: &str) -> String {
        crate::sanitize::escaped_excerpt(&self.scrub(text), EXCERPT_BYTES)
    }

    /// `text` with every secret masked.
    pub fn scrub(&self, text: &str) -> String {
        let mut s = mask_secret_keys(text);
        for k in self.known.read().expect("scrubber lock").iter() {
            if s.contains(k.as_str()) {
                s = s.replace(k.as_str(), "***");
            }
        }
        s
    }
}

/// Replaces the string value after any `"<secret key>"\s*:\s*` with `***`.
fn mask_secret_keys(text: &str) -> String {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let lower = lower.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let Some(key) = SECRET_KEYS.iter().find(|k| {
            let end = i + 1 + k.len();
            end < bytes.len() && &lower[i + 1..end] == k.as_bytes() && bytes[end] == b'"'
        }) else {
            i += 1;
            continue;
        };
        let mut j = i + key.len() + 2;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b':' {
            i += 1;
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'"' {
            i = j;
            continue;
        }
        // j is the opening quote of the value: find its end (or the end of the text).
        let start = j + 1;
        let mut k = start;
        while k < bytes.len() && bytes[k] != b'"' {
            if bytes[k] == b'\\' {
                k += 1;
            }
            k += 1;
        }
        out.push_str(&text[copied..start]);
        out.push_str("***");
        copied = k.min(bytes.len());
        i = copied + 1;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys_and_known_values() {
        let s = Scrubber::new();
        s.add("ApiKey SU-1:topsecret");
        let text = r#"{"options": {"api_key": "ApiKey SU-9:inst", "x": "ApiKey SU-1:topsecret"}, "variables": [{"name": "P", "value" : "pw\"d", "secure": true}]}"#;
        let out = s.scrub(text);
        assert!(!out.contains("inst"), "{out}");
        assert!(!out.contains("topsecret"), "{out}");
        assert!(!out.contains("pw"), "{out}");
        assert!(out.contains(r#""name": "P""#), "{out}");
    }

    #[test]
    fn truncated_unterminated_value_is_masked() {
        let s = Scrubber::new();
        let out = s.excerpt(r#"{"api_key": "abcdefgh"#);
        assert_eq!(out, r#"{"api_key": "***"#);
        let long = "é".repeat(300);
        assert!(s.excerpt(&long).len() <= EXCERPT_BYTES + '…'.len_utf8());
        let out = s.excerpt("a\nFORGED\u{1b}[31m\0");
        assert!(!out.chars().any(char::is_control), "{out:?}");
    }
}
