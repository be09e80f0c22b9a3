use serde::Deserialize;
use wasmtp_plugin_sdk::{Config, Connection, Plugin, Verdict, log};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Settings {
    names: Vec<String>,
} // every key optional: `{}` must work

struct NoLocalhost {
    names: Vec<String>,
}

impl Plugin for NoLocalhost {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?; // an Err refuses the plugin at load, with this text
        let names = if s.names.is_empty() {
            vec!["localhost".into()]
        } else {
            s.names
        };
        Ok(NoLocalhost { names })
    }

    fn ehlo(&self, conn: &Connection, name: &str) -> Verdict {
        if self.names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            log::info(&format!("{} claims to be {name}", conn.peer_ip));
            return Verdict::reject_with(550, "5.7.1", "You are not me");
        }
        Verdict::Continue // no opinion: the next plugin decides
    }
}

wasmtp_plugin_sdk::export!(NoLocalhost);
// The manifest carried inside the component: name, version, description, authors and license come
// from Cargo.toml; usually this object lives in a wasmtp-plugin.json next to it:
// `wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));`
wasmtp_plugin_sdk::manifest!(
    r#"{
        "hooks": ["ehlo"],
        "grants": [],
        "config_schema": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"names": {"type": "array", "items": {"type": "string"}}}
        }
    }"#
);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::testing::{self, FakeHost};

    #[test]
    fn refuses_localhost() {
        let _host = FakeHost::new(); // fresh fake kv/dns/notes/clock/log for this test
        let p = NoLocalhost::init(Config::empty()).unwrap();
        let conn = testing::connection("192.0.2.1");
        assert!(p.ehlo(&conn, "LOCALHOST").is_refusal());
        assert_eq!(p.ehlo(&conn, "mail.example.org"), Verdict::Continue);
    }
}
