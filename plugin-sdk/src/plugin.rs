//! The trait plugin authors implement: one method per hook of the WIT `hooks` interface, each
//! defaulting to "no opinion" so a plugin implements only the hooks it cares about.

use crate::{Config, Connection, DeliveryReport, Envelope, Message, Outcome, Params, Recipient};
use crate::{Route, Verdict};

/// A wasmtp plugin. Hooks are called in session order (`connect`, `ehlo`, `mail_from`, `rcpt`
/// per recipient, `data`, `deliver`), and later the notifications (`delivered`, `deferred`,
/// `bounced`), but only the hooks listed for the plugin in the server config (`hooks = [...]`).
///
/// The host may create a fresh instance for every transaction (or call): `init` runs on each, and
/// `self` must not be used to carry state between transactions. Use [`notes`](crate::notes) to
/// pass data to later hooks and other plugins within a transaction, and [`kv`](crate::kv) across
/// transactions.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its config table; called on every fresh instance before its first
    /// hook. An error refuses the plugin at load time, with the text in the server log.
    fn init(config: Config) -> Result<Self, String>;

    /// A client connected, before the greeting. Answer a refusal to refuse the session.
    fn connect(&self, conn: &Connection) -> Verdict {
        let _ = conn;
        Verdict::Continue
    }

    /// The client sent HELO/EHLO `name`.
    fn ehlo(&self, conn: &Connection, name: &str) -> Verdict {
        let _ = (conn, name);
        Verdict::Continue
    }

    /// The client sent MAIL FROM `sender` (`""` for the null sender) with ESMTP `params`.
    fn mail_from(&self, conn: &Connection, sender: &str, params: &Params) -> Outcome {
        let _ = (conn, sender, params);
        Outcome::CONTINUE
    }

    /// The client sent RCPT TO `rcpt`; `env.recipients` holds those accepted before it.
    fn rcpt(&self, conn: &Connection, env: &Envelope, rcpt: &Recipient) -> Outcome {
        let _ = (conn, env, rcpt);
        Outcome::CONTINUE
    }

    /// The whole message arrived; `msg` reads it on demand.
    fn data(&self, conn: &Connection, env: &Envelope, msg: &Message) -> Outcome {
        let _ = (conn, env, msg);
        Outcome::CONTINUE
    }

    /// Chooses the route of one recipient of an accepted message (called once per recipient of
    /// `env.recipients`). [`Route::Default`] leaves the decision to the next plugin or the server.
    fn deliver(&self, conn: &Connection, env: &Envelope, rcpt: &Recipient) -> Route {
        let _ = (conn, env, rcpt);
        Route::Default
    }

    /// A recipient's copy was delivered.
    fn delivered(&self, report: &DeliveryReport) {
        let _ = report;
    }

    /// A delivery attempt failed temporarily and will be retried.
    fn deferred(&self, report: &DeliveryReport) {
        let _ = report;
    }

    /// A recipient's copy failed permanently and was bounced.
    fn bounced(&self, report: &DeliveryReport) {
        let _ = report;
    }
}
