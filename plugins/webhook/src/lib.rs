//! webhook: POSTs every delivery notification (`delivered`, `deferred`, `bounced`) as one JSON
//! object to a configured URL:
//!
//! ```json
//! {"event": "delivered", "queue_id": "…", "sender": "a@example.org",
//!  "recipient": "b@example.net", "attempts": 1, "detail": "delivered to b"}
//! ```
//!
//! A transport error, a 5xx or a 429 is retried, up to `attempts` tries in all, waiting
//! `retry_delay_ms` (doubled after each try) in between, and never starting a try after
//! `budget_ms` from the first: keep `budget_ms` under the plugin's timeout for these hooks
//! (`timeouts = { delivered = "…", … }`), or the host cuts the call off. Another 4xx is not
//! retried. A notification that could not be delivered is logged (warn) and dropped: the hooks
//! cannot change the delivery outcome. Needs the `http` grant with the URL's host in
//! `allowed_hosts`; each try is one of the grant's `max_calls` for the queue run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmtp_plugin_sdk::{Config, DeliveryReport, Plugin, log};

/// The `[plugin.config]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Where the notifications go.
    url: String,
    /// Tries per notification, the first included.
    #[serde(default = "attempts")]
    attempts: u32,
    /// Wait before the second try; doubled after each further one.
    #[serde(default = "retry_delay_ms")]
    retry_delay_ms: u64,
    /// No try starts later than this after the first.
    #[serde(default = "budget_ms")]
    budget_ms: u64,
    /// Extra request headers (an `Authorization` token, say).
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn attempts() -> u32 {
    3
}
fn retry_delay_ms() -> u64 {
    100
}
fn budget_ms() -> u64 {
    2000
}

/// One notification as posted.
#[derive(Serialize)]
struct Event<'a> {
    event: &'a str,
    queue_id: &'a str,
    sender: &'a str,
    recipient: &'a str,
    attempts: u32,
    detail: &'a str,
}

/// What one try gave.
#[derive(Debug, PartialEq, Eq)]
enum Try {
    Done,
    Retry(String),
    GiveUp(String),
}

/// Sorts an HTTP answer (or a transport error) into done, retry, give up.
fn classify(r: Result<u16, String>) -> Try {
    match r {
        Ok(s) if (200..400).contains(&s) => Try::Done,
        Ok(s) if s >= 500 || s == 429 => Try::Retry(format!("HTTP {s}")),
        Ok(s) => Try::GiveUp(format!("HTTP {s}")),
        Err(e) => Try::Retry(e),
    }
}

struct Webhook {
    s: Settings,
    headers: Vec<(String, String)>,
}

impl Webhook {
    fn post(&self, event: &str, r: &DeliveryReport) {
        let body = serde_json::to_vec(&Event {
            event,
            queue_id: &r.queue_id,
            sender: &r.sender,
            recipient: &r.recipient,
            attempts: r.attempts,
            detail: &r.detail,
        })
        .unwrap_or_default();
        let started = wasmtp_http_client::now_ms();
        let mut delay = self.s.retry_delay_ms;
        for n in 1..=self.s.attempts {
            let sent = wasmtp_http_client::send(
                "POST",
                &self.s.url,
                &self.headers,
                &body,
                Some(self.s.budget_ms),
            );
            let why = match classify(sent.map(|resp| resp.status)) {
                Try::Done => {
                    log::debug(&format!(
                        "webhook: {event} for {} posted (try {n})",
                        r.recipient
                    ));
                    return;
                }
                Try::GiveUp(why) => {
                    log::warn(&format!(
                        "webhook: {event} for {} refused: {why}; dropped",
                        r.recipient
                    ));
                    return;
                }
                Try::Retry(why) => why,
            };
            let elapsed = wasmtp_http_client::now_ms().saturating_sub(started);
            if n == self.s.attempts || elapsed + delay >= self.s.budget_ms {
                log::warn(&format!(
                    "webhook: {event} for {} not posted after {n} tries ({why}); dropped",
                    r.recipient
                ));
                return;
            }
            log::info(&format!(
                "webhook: try {n} failed ({why}); retrying in {delay} ms"
            ));
            wasmtp_http_client::sleep_ms(delay);
            delay = delay.saturating_mul(2);
        }
    }
}

impl Plugin for Webhook {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        wasmtp_http_client::parse_url(&s.url)?;
        if s.attempts == 0 {
            return Err("attempts must be at least 1".into());
        }
        let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        headers.extend(s.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Webhook { s, headers })
    }

    fn delivered(&self, report: &DeliveryReport) {
        self.post("delivered", report);
    }

    fn deferred(&self, report: &DeliveryReport) {
        self.post("deferred", report);
    }

    fn bounced(&self, report: &DeliveryReport) {
        self.post("bounced", report);
    }
}

wasmtp_plugin_sdk::export!(Webhook);
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_transport_errors_are_retried_other_refusals_not() {
        assert_eq!(classify(Ok(200)), Try::Done);
        assert_eq!(classify(Ok(204)), Try::Done);
        assert_eq!(classify(Ok(500)), Try::Retry("HTTP 500".into()));
        assert_eq!(classify(Ok(503)), Try::Retry("HTTP 503".into()));
        assert_eq!(classify(Ok(429)), Try::Retry("HTTP 429".into()));
        assert_eq!(classify(Ok(404)), Try::GiveUp("HTTP 404".into()));
        assert_eq!(
            classify(Err("ConnectionRefused".into())),
            Try::Retry("ConnectionRefused".into())
        );
    }

    #[test]
    fn config_needs_a_url() {
        assert!(Webhook::init(Config::from_json("{}").unwrap()).is_err());
        assert!(Webhook::init(Config::from_json(r#"{"url":"ftp://x/"}"#).unwrap()).is_err());
        let w = Webhook::init(
            Config::from_json(
                r#"{"url":"http://127.0.0.1:8080/hook","headers":{"Authorization":"Bearer t"}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(w.s.attempts, 3);
        assert!(
            w.headers
                .contains(&("Authorization".into(), "Bearer t".into()))
        );
    }
}
