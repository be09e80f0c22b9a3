//! Logging and limit counters. Tracing with human or JSON output on stderr;
//! spans carry the session id and peer, and the queue id of each message.
//!
//! Every bound a client or a plugin can run into (sizes, counts, waits)
//! reports through [`limit_hit`]: a process-wide counter per limit name, a
//! log line, and a summary at shutdown. The names are the config keys that
//! set the limits, so an operator who sees `limit=limits.max_bdat_chunk`
//! knows which key to raise.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}

static LIMIT_HITS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Counts one hit of the limit named `limit` (its config key, such as
/// `limits.max_message_size`) and logs it with `detail` (who or what hit
/// it). Returns the new total. Hits are rare events, so a lock is fine.
pub fn limit_hit(limit: &'static str, detail: &str) -> u64 {
    let total = {
        let mut hits = LIMIT_HITS.lock().unwrap_or_else(|e| e.into_inner());
        let n = hits.entry(limit).or_insert(0);
        *n += 1;
        *n
    };
    crate::metrics::limit_hit(limit);
    tracing::warn!(limit, total, detail = %escape(detail), "limit reached");
    total
}

/// How often each limit was hit since start (name, count), by name.
pub fn limit_hits() -> Vec<(&'static str, u64)> {
    let hits = LIMIT_HITS.lock().unwrap_or_else(|e| e.into_inner());
    hits.iter().map(|(k, v)| (*k, *v)).collect()
}

/// A client- or plugin-supplied string made safe for one log line: control
/// characters, backslashes, line and paragraph separators and bidi
/// overrides are escaped (`\n`, `\u{1b}`, `\u{202e}`) and the result is cut
/// at 200 characters, so nothing a client sends can start a forged line,
/// reorder what a reader sees, or flood the log. Other non-ASCII text (an
/// SMTPUTF8 address) stays readable.
pub fn escape(s: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::with_capacity(s.len().min(MAX) + 8);
    for (n, c) in s.chars().enumerate() {
        if n == MAX {
            out.push_str("...");
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.extend(c.escape_default())
            }
            c => out.push(c),
        }
    }
    out
}

/// [`escape`] for raw bytes (invalid UTF-8 is shown as U+FFFD).
pub fn escape_bytes(b: &[u8]) -> String {
    escape(&String::from_utf8_lossy(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_one_line() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(
            escape("a\r\nlevel=ERROR forged"),
            "a\\r\\nlevel=ERROR forged"
        );
        assert_eq!(escape("\x1b[31m\\"), "\\u{1b}[31m\\\\");
        assert_eq!(escape("jösé\u{202e}"), "jösé\\u{202e}");
        assert_eq!(escape(&"x".repeat(500)).len(), 203);
    }

    #[test]
    fn limit_hits_count() {
        let before = limit_hits()
            .into_iter()
            .find(|(k, _)| *k == "test.limit")
            .map_or(0, |x| x.1);
        limit_hit("test.limit", "a");
        assert_eq!(limit_hit("test.limit", "b"), before + 2);
    }
}
