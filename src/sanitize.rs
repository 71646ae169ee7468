//! Escaping outside input before it reaches a log line, an error message or a metric.
//!
//! Excerpts of frames, HTTP bodies and server answers are hostile: a newline would forge a log
//! line, ANSI escapes and NUL bytes would reach the operator's terminal. [`escape_control`] turns
//! every control character (C0, DEL, C1) and the Unicode line/paragraph separators into a visible
//! escape (`\n`, `\r`, `\t`, `\u{1b}`…); everything else is kept.

use std::borrow::Cow;

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `s` with control characters escaped (borrowed when there is nothing to escape).
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape_control`] of at most `max` bytes of `s` (cut on a character boundary, `…` appended).
pub fn escaped_excerpt(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = escape_control(&s[..end]).into_owned();
    if end < s.len() {
        out.push('…');
    }
    out
}

/// The error chain of `e`, one cause after another (`e: cause: cause…`), for messages: reqwest and
/// the like hide the interesting part in the sources. The one place that walks a cause chain. With
/// `skip_repeats`, a cause whose text the message already holds is left out.
pub fn error_chain(e: &dyn std::error::Error, skip_repeats: bool) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !(skip_repeats && s.contains(&msg)) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible() {
        assert!(matches!(escape_control("plain text é"), Cow::Borrowed(_)));
        assert_eq!(
            escape_control("a\nb\r\tc\u{1b}[31m\0\u{7f}\u{85}\u{2028}"),
            "a\\nb\\r\\tc\\u{1b}[31m\\u{0}\\u{7f}\\u{85}\\u{2028}"
        );
    }

    #[test]
    fn excerpts_are_bounded_and_escaped() {
        assert_eq!(escaped_excerpt("ab\ncd", 3), "ab\\n…");
        assert_eq!(escaped_excerpt("ééé", 3), "é…");
        assert_eq!(escaped_excerpt("short", 100), "short");
    }
}
