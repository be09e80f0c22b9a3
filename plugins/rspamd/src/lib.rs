//! rspamd: at `data`, sends the message with its envelope to rspamd's HTTP API (`POST
//! /checkv2`, the protocol rspamc and rspamd's milter speak: the envelope and connection facts
//! as request headers, the raw message as the body) and turns rspamd's action into a verdict:
//!
//! | rspamd action | verdict |
//! |---|---|
//! | `reject` | `550 5.7.1` (rspamd's SMTP message as text when it gives one) |
//! | `soft reject`, `greylist` | `451 4.7.1` |
//! | `add header`, `rewrite subject` | continue, with `X-Spam: Yes` (and the new Subject) |
//! | `no action` | continue |
//!
//! Every checked message gets `X-Spam-Score: <score> / <required>` and the `score.rspamd` note
//! (the notes convention spam-score adds up). When rspamd cannot be reached or answers badly,
//! `on_error` decides: `accept` (fail open, the default: the message goes on unscored and a
//! warning is logged) or `tempfail` (fail closed: `451 4.7.1`, the client retries).
//!
//! Needs the `http` grant with rspamd's host:port in `allowed_hosts`.

use serde::Deserialize;
use wasmtp_plugin_sdk::{
    Config, Connection, Envelope, Message, Modification, Outcome, Plugin, Verdict, log, notes,
};

/// The `[plugin.config]` table.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// rspamd's check endpoint (its normal worker).
    url: String,
    /// When rspamd is unreachable or its answer unusable: `accept` or `tempfail`.
    on_error: OnError,
    /// Larger messages are not sent (they pass unscored), in bytes.
    max_size: u64,
    /// Connect and first-byte timeout asked of the host, in milliseconds.
    timeout_ms: u64,
    /// Header with the score on every checked message.
    score_header: String,
    /// Header set to `Yes` when rspamd says `add header` or `rewrite subject`.
    spam_header: String,
    /// rspamd's `Password` header, when its worker wants one.
    password: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum OnError {
    Accept,
    Tempfail,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: "http://127.0.0.1:11333/checkv2".into(),
            on_error: OnError::Accept,
            max_size: 20 << 20,
            timeout_ms: 5000,
            score_header: "X-Spam-Score".into(),
            spam_header: "X-Spam".into(),
            password: None,
        }
    }
}

/// The parts of rspamd's `/checkv2` answer used here.
#[derive(Deserialize, Debug)]
struct Answer {
    action: String,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    required_score: f64,
    /// The rewritten subject (`rewrite subject`).
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    messages: Messages,
}

#[derive(Deserialize, Debug, Default)]
struct Messages {
    #[serde(default)]
    smtp_message: Option<String>,
}

struct Rspamd {
    s: Settings,
}

impl Rspamd {
    /// The request headers rspamd reads the envelope and connection from.
    fn headers(&self, conn: &Connection, env: &Envelope) -> Vec<(String, String)> {
        let mut h = vec![("IP".to_string(), conn.peer_ip.clone())];
        if let Some(helo) = &conn.helo {
            h.push(("Helo".into(), helo.clone()));
        }
        h.push(("From".into(), env.sender.clone()));
        for r in &env.recipients {
            h.push(("Rcpt".into(), r.address.clone()));
        }
        if let Some(user) = &conn.authenticated {
            h.push(("User".into(), user.clone()));
        }
        if let Some(p) = &self.s.password {
            h.push(("Password".into(), p.clone()));
        }
        h
    }

    fn check(&self, conn: &Connection, env: &Envelope, raw: &[u8]) -> Result<Answer, String> {
        let headers = self.headers(conn, env);
        let resp =
            wasmtp_http_client::send("POST", &self.s.url, &headers, raw, Some(self.s.timeout_ms))?;
        if resp.status != 200 {
            return Err(format!(
                "rspamd answered HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            ));
        }
        serde_json::from_slice(&resp.body).map_err(|e| format!("rspamd's answer: {e}"))
    }

    fn failed(&self, why: &str) -> Outcome {
        log::warn(&format!("rspamd: {why}"));
        match self.s.on_error {
            OnError::Accept => Outcome::CONTINUE,
            OnError::Tempfail => Verdict::tempfail_with(
                451,
                "4.7.1",
                "Message could not be checked for spam; try again later",
            )
            .into(),
        }
    }
}

/// The verdict and headers for rspamd's answer.
fn outcome(s: &Settings, a: &Answer) -> Outcome {
    let score = format!("{:.2}", a.score);
    notes::set("score.rspamd", &score);
    let scored = Outcome::CONTINUE.with(Modification::change_header(
        &s.score_header,
        format!("{score} / {:.2}", a.required_score),
    ));
    let text = |default: &str| {
        a.messages
            .smtp_message
            .clone()
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    match a.action.as_str() {
        "reject" => Verdict::reject_with(550, "5.7.1", text("Message rejected as spam")).into(),
        "soft reject" | "greylist" => {
            Verdict::tempfail_with(451, "4.7.1", text("Try again later")).into()
        }
        "add header" | "rewrite subject" => {
            let o = scored.with(Modification::change_header(&s.spam_header, "Yes"));
            match &a.subject {
                Some(subject) if a.action == "rewrite subject" => {
                    o.with(Modification::change_header("Subject", subject.clone()))
                }
                _ => o,
            }
        }
        _ => scored,
    }
}

impl Plugin for Rspamd {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        wasmtp_http_client::parse_url(&s.url)?;
        Ok(Rspamd { s })
    }

    fn data(&self, conn: &Connection, env: &Envelope, msg: &Message) -> Outcome {
        let size = msg.size();
        if size > self.s.max_size {
            log::info(&format!(
                "rspamd: message of {size} bytes is over max_size {}; not checked",
                self.s.max_size
            ));
            return Outcome::CONTINUE;
        }
        let raw = msg.raw(size);
        match self.check(conn, env, &raw) {
            Ok(a) => {
                log::info(&format!(
                    "rspamd: action {:?}, score {:.2} / {:.2}",
                    a.action, a.score, a.required_score
                ));
                outcome(&self.s, &a)
            }
            Err(e) => self.failed(&e),
        }
    }
}

wasmtp_plugin_sdk::export!(Rspamd);
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::Reply;

    fn answer(json: &str) -> Answer {
        serde_json::from_str(json).unwrap()
    }

    fn header(o: &Outcome, name: &str) -> Option<String> {
        o.modifications.iter().find_map(|m| match m {
            Modification::ChangeHeader(h) if h.name == name => Some(h.value.clone()),
            _ => None,
        })
    }

    #[test]
    fn actions_become_verdicts_and_headers() {
        let s = Settings::default();
        let o = outcome(
            &s,
            &answer(r#"{"action":"no action","score":1.5,"required_score":15}"#),
        );
        assert_eq!(o.verdict, Verdict::Continue);
        assert_eq!(header(&o, "X-Spam-Score").as_deref(), Some("1.50 / 15.00"));
        assert_eq!(header(&o, "X-Spam"), None);

        let o = outcome(
            &s,
            &answer(r#"{"action":"add header","score":7,"required_score":15}"#),
        );
        assert_eq!(header(&o, "X-Spam").as_deref(), Some("Yes"));

        let o = outcome(
            &s,
            &answer(
                r#"{"action":"rewrite subject","score":9,"required_score":15,"subject":"***SPAM*** hi"}"#,
            ),
        );
        assert_eq!(header(&o, "Subject").as_deref(), Some("***SPAM*** hi"));

        let o = outcome(
            &s,
            &answer(r#"{"action":"reject","score":20,"required_score":15}"#),
        );
        assert_eq!(
            o.verdict,
            Verdict::Reject(Some(Reply::new(550, "5.7.1", "Message rejected as spam")))
        );
        let o = outcome(
            &s,
            &answer(
                r#"{"action":"reject","score":20,"required_score":15,"messages":{"smtp_message":"Go away"}}"#,
            ),
        );
        assert_eq!(
            o.verdict,
            Verdict::Reject(Some(Reply::new(550, "5.7.1", "Go away")))
        );
        for action in ["soft reject", "greylist"] {
            let o = outcome(
                &s,
                &answer(&format!(r#"{{"action":"{action}","score":5}}"#)),
            );
            assert_eq!(
                o.verdict,
                Verdict::Tempfail(Some(Reply::new(451, "4.7.1", "Try again later")))
            );
        }
    }
}
