//! SMTP AUTH (RFC 4954) in the session, and the policy that depends on it:
//! what EHLO offers, who must authenticate before MAIL, which senders an
//! account may use, who may relay, and how the Received header says so
//! (RFC 3848).

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use super::Session;
use super::io::{Input, Stop};
use crate::auth::{self as sasl, Credentials, Response};
use crate::config::Role;
use crate::smtp::{Address, Reply};
use crate::users::Login;

/// Longest AUTH response line we read (RFC 4954 §4: at least 12288).
const AUTH_LINE: usize = 12288;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// AUTH is offered over TLS, or over loopback plaintext if configured.
    fn auth_available(&self) -> bool {
        self.info.tls.is_some()
            || (self.settings().auth.allow_plaintext_on_loopback
                && self.info.peer.ip().is_loopback())
    }

    /// EHLO keywords for STARTTLS and AUTH, appended to `ext`.
    pub(super) fn security_extensions(&self, mut ext: Vec<String>) -> Vec<String> {
        if self.info.tls.is_none() {
            ext.push("STARTTLS".into());
        }
        if self.auth_available() && self.user.is_none() {
            ext.push(format!("AUTH {}", sasl::MECHANISMS.join(" ")));
        }
        ext
    }

    /// Handles `AUTH mechanism [initial-response]`.
    pub(super) async fn auth(
        &mut self,
        mech: String,
        initial: Option<String>,
    ) -> Result<Reply, Stop> {
        if self.helo.as_ref().is_none_or(|h| !h.esmtp) {
            return Ok(Reply::bad_sequence("Send EHLO first"));
        }
        if !self.auth_available() {
            return Ok(Reply::tls_required());
        }
        if self.user.is_some() {
            return Ok(Reply::auth_not_now("Already authenticated"));
        }
        if self.tx.is_some() {
            return Ok(Reply::auth_not_now(
                "AUTH not permitted during a mail transaction",
            ));
        }
        let creds = match mech.as_str() {
            "PLAIN" => {
                let data = match initial {
                    Some(i) => sasl::decode(&i),
                    None => self.challenge("").await?,
                };
                match data {
                    Response::Data(d) => sasl::parse_plain(&d),
                    Response::Cancel => return Ok(Reply::auth_cancelled()),
                    Response::Malformed => None,
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => sasl::decode(&i),
                    None => self.challenge("Username:").await?,
                };
                let user = match user {
                    Response::Data(d) => d,
                    Response::Cancel => return Ok(Reply::auth_cancelled()),
                    Response::Malformed => return Ok(Reply::auth_malformed()),
                };
                match self.challenge("Password:").await? {
                    Response::Data(p) => match (String::from_utf8(user), String::from_utf8(p)) {
                        (Ok(user), Ok(password)) if !user.is_empty() => {
                            Some(Credentials { user, password })
                        }
                        _ => None,
                    },
                    Response::Cancel => return Ok(Reply::auth_cancelled()),
                    Response::Malformed => None,
                }
            }
            _ => return Ok(Reply::auth_mechanism_unknown()),
        };
        let Some(creds) = creds else {
            return Ok(Reply::auth_malformed());
        };
        Ok(self.verify(&mech, creds).await)
    }

    /// Sends a 334 challenge and decodes the client's answer.
    async fn challenge(&mut self, text: &str) -> Result<Response, Stop> {
        self.conn.reply(&Reply::auth_challenge(&sasl::encode(text)));
        let timeout = self.settings().timeouts.command;
        Ok(match self.conn.read_line(AUTH_LINE, timeout, None).await? {
            Input::Line(l) => {
                String::from_utf8(l).map_or(Response::Malformed, |l| sasl::decode(&l))
            }
            Input::TooLong => Response::Malformed,
        })
    }

    /// Checks the password off the runtime threads (argon2 is slow on
    /// purpose, so only `auth.max_verifications` run at once and the rest
    /// are told to try later), then records success or slows the client down.
    async fn verify(&mut self, mech: &str, creds: Credentials) -> Reply {
        // The name is the client's, unchecked: escaped wherever it is logged.
        let name = crate::observe::escape(&creds.user);
        let ip = self.info.peer.ip();
        let user = match self.ctx.users.login(creds.user, creds.password).await {
            Login::Ok(user) => user,
            Login::Failed => return self.failed(mech, &name).await,
            Login::Busy => {
                crate::metrics::auth(mech, "busy");
                crate::observe::limit_hit(
                    "auth.max_verifications",
                    &format!("AUTH {mech} from {ip} as {name}"),
                );
                return Reply::auth_busy();
            }
        };
        crate::metrics::auth(mech, "success");
        info!(user = %user.name, mechanism = mech, "authenticated");
        self.ctx.auth_throttle.succeeded(ip);
        self.info.auth = Some(user.name.clone());
        self.user = Some(user);
        Reply::auth_ok()
    }

    /// A wrong password or unknown user: wait as the brake says, and close
    /// the session after `auth.max_failures`. `name` is already escaped.
    async fn failed(&mut self, mech: &str, name: &str) -> Reply {
        self.auth_failures += 1;
        crate::metrics::auth(mech, "failure");
        let delay = self.ctx.auth_throttle.failed(self.info.peer.ip());
        info!(
            user = %name,
            mechanism = mech,
            failures = self.auth_failures,
            delay_ms = delay.as_millis() as u64,
            "authentication failed"
        );
        tokio::time::sleep(delay).await;
        if self.auth_failures >= self.settings().auth.max_failures {
            return Reply::too_many_auth_failures(&self.settings().hostname);
        }
        Reply::auth_failed()
    }

    /// MAIL-time checks: submission roles need AUTH, and an account limited
    /// to some senders may only use those. Also settles `AUTH=` (RFC 4954
    /// §5): only an authenticated client's own identity is kept, anything
    /// else is treated as `AUTH=<>`.
    pub(super) fn mail_policy(
        &self,
        sender: Option<&Address>,
        auth_param: &mut Option<String>,
    ) -> Option<Reply> {
        let Some(user) = &self.user else {
            if self.info.role != Role::Mx {
                return Some(Reply::auth_required());
            }
            if auth_param.is_some() {
                *auth_param = Some("<>".into());
            }
            return None;
        };
        if let Some(a) = sender.filter(|a| !user.allows_sender(&a.to_string())) {
            return Some(Reply::sender_not_owned(&a.to_string()));
        }
        if auth_param
            .as_deref()
            .is_some_and(|p| !p.eq_ignore_ascii_case(&user.name))
        {
            *auth_param = Some("<>".into());
        }
        None
    }

    /// Non-local recipients are accepted from authenticated clients and
    /// trusted networks only.
    pub(super) fn may_relay(&self) -> bool {
        self.user.is_some() || self.settings().relay.trusts(self.info.peer.ip())
    }

    /// The RFC 3848 / RFC 6531 protocol name with its S (TLS) and A (AUTH)
    /// suffixes, and comments naming the TLS parameters and the user.
    pub(super) fn received_with(&self, proto: &str) -> (String, String) {
        let mut name = proto.to_string();
        let mut comments = String::new();
        if proto != "SMTP" {
            if self.info.tls.is_some() {
                name.push('S');
            }
            if self.user.is_some() {
                name.push('A');
            }
        }
        if let Some(t) = &self.info.tls {
            comments.push_str(&format!(
                "\r\n\t(using {} with cipher {})",
                t.version, t.cipher
            ));
        }
        if let Some(u) = &self.user {
            comments.push_str(&format!("\r\n\t(authenticated as {})", u.name));
        }
        (name, comments)
    }
}
