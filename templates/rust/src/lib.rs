//! {{name}}: a wasmtp policy plugin. At the data hook it adds a header field that records where the
//! message came from (`X-{{name}}: from 192.0.2.1 helo mail.example.org`), unless the client
//! authenticated and `skip_authenticated` is set. Start from here: every hook of the `Plugin`
//! trait defaults to "no opinion", so implement only the ones you need.

use serde::Deserialize;
use wasmtp_plugin_sdk::{Config, Connection, Envelope, Message, Modification, Outcome, Plugin};

/// The `[plugin.config]` table of the server config; every key is optional, and an unknown key
/// refuses the plugin at load (`deny_unknown_fields`), so a typo cannot go unnoticed.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Name of the header field to add.
    header: String,
    /// Leave mail from authenticated clients alone.
    skip_authenticated: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header: "X-{{name}}".into(),
            skip_authenticated: false,
        }
    }
}

struct Tagger {
    settings: Settings,
}

impl Plugin for Tagger {
    /// Runs once per instance; an Err refuses the plugin at load with this text.
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.header.is_empty() || settings.header.contains([':', ' ']) {
            return Err(format!("header {:?} is not a field name", settings.header));
        }
        Ok(Tagger { settings })
    }

    fn data(&self, conn: &Connection, _env: &Envelope, _msg: &Message) -> Outcome {
        if self.settings.skip_authenticated && conn.authenticated.is_some() {
            return Outcome::CONTINUE;
        }
        let helo = conn.helo.as_deref().unwrap_or("(none)");
        let value = format!("from {} helo {helo}", conn.peer_ip);
        Outcome::CONTINUE.with(Modification::add_header(&self.settings.header, value))
    }
}

wasmtp_plugin_sdk::export!(Tagger);
// The manifest inside the component: name, version, description and license from Cargo.toml, the
// rest (hooks, grants, config schema) from wasmtp-plugin.json.
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::testing::{self, FakeHost};

    fn run(config: &str, authenticated: bool) -> Outcome {
        let _host = FakeHost::new();
        let p = Tagger::init(testing::config(config)).unwrap();
        let mut conn = testing::connection("192.0.2.1");
        conn.helo = Some("mail.example.org".into());
        if authenticated {
            conn.authenticated = Some("alice".into());
        }
        let env = testing::envelope("a@example.org", &["b@example.net"]);
        p.data(&conn, &env, &testing::message("Subject: hi\r\n\r\nhello\r\n"))
    }

    #[test]
    fn adds_the_header() {
        let out = run("{}", false);
        assert_eq!(
            out.modifications,
            vec![Modification::add_header(
                "X-{{name}}",
                "from 192.0.2.1 helo mail.example.org"
            )]
        );
    }

    #[test]
    fn skips_authenticated_clients_when_asked() {
        assert!(run(r#"{"skip_authenticated": true}"#, true).modifications.is_empty());
        assert_eq!(run(r#"{"skip_authenticated": true}"#, false).modifications.len(), 1);
    }

    #[test]
    fn refuses_a_bad_config() {
        let _host = FakeHost::new();
        assert!(Tagger::init(testing::config(r#"{"header": "a b"}"#)).is_err());
        assert!(Tagger::init(testing::config(r#"{"heder": "X-A"}"#)).is_err());
    }
}
