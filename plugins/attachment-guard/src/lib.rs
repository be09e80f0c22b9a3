//! attachment-guard: refuses (or quarantines) messages carrying attachments of dangerous types,
//! judged by file-name extension and by declared content type, in nested messages too. The
//! message is parsed with mail-parser inside the sandbox; it needs no grant.

use mail_parser::{MessageParser, MimeHeaders, PartType};
use serde::Deserialize;
use wasmtp_plugin_sdk::{
    Config, Connection, Envelope, Message, Outcome, Plugin, Reply, Verdict, log,
};

/// What to do with a message carrying a forbidden attachment.
#[derive(Deserialize, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "lowercase")]
enum Action {
    /// Refuse it (554 5.7.1).
    Reject,
    /// Accept it into quarantine.
    Quarantine,
}

/// The `[plugin.config]` table.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Forbidden file-name extensions (without dot, case-insensitive). Replaces the default list.
    extensions: Vec<String>,
    /// Forbidden content types (`type/subtype`, case-insensitive). Replaces the default list.
    content_types: Vec<String>,
    /// What a hit does.
    action: Action,
    /// Messages larger than this (bytes) are only scanned in their first `max_scan_bytes`.
    max_scan_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        let ext = "exe scr pif com bat cmd vbs vbe js jse wsf wsh msi msp hta cpl jar ps1 lnk reg iso img";
        Settings {
            extensions: ext.split(' ').map(String::from).collect(),
            content_types: [
                "application/x-msdownload",
                "application/x-msdos-program",
                "application/x-dosexec",
                "application/x-ms-installer",
                "application/hta",
                "application/x-sh",
            ]
            .map(String::from)
            .to_vec(),
            action: Action::Reject,
            max_scan_bytes: 32 * 1024 * 1024,
        }
    }
}

struct AttachmentGuard {
    s: Settings,
}

impl AttachmentGuard {
    /// The first forbidden attachment in `raw`, described for the reply.
    fn find(&self, raw: &[u8], depth: u8) -> Option<String> {
        let parsed = MessageParser::default().parse(raw)?;
        for part in parsed.parts.iter() {
            if let Some(name) = part.attachment_name() {
                let ext = name
                    .rsplit_once('.')
                    .map(|(_, e)| e.trim().to_ascii_lowercase());
                if ext.is_some_and(|e| self.s.extensions.iter().any(|x| x.eq_ignore_ascii_case(&e)))
                {
                    return Some(format!("file {name:?}"));
                }
            }
            if let Some(ct) = part.content_type() {
                let full =
                    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase();
                if self
                    .s
                    .content_types
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&full))
                {
                    return Some(format!("type {full}"));
                }
            }
            if let PartType::Message(inner) = &part.body
                && depth < 4
                && let Some(hit) = self.find(inner.raw_message(), depth + 1)
            {
                return Some(hit);
            }
        }
        None
    }
}

/// The message's header section with the blank line that ends it, read on
/// its own (the first 16 KiB at most); None if it does not end there.
fn header_section(msg: &Message) -> Option<Vec<u8>> {
    let mut head = msg.body(0, 16 * 1024);
    if head.starts_with(b"\n") || head.starts_with(b"\r\n") {
        return None;
    }
    let end = head.windows(2).enumerate().find_map(|(i, w)| match w {
        [b'\n', b'\n'] => Some(i + 2),
        [b'\n', b'\r'] if head.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })?;
    head.truncate(end);
    Some(head)
}

/// Whether a message with this header section has parts inside it
/// (`multipart/*`, `message/*`), which only the whole message shows. A
/// single part (plain text, or one file sent as the message itself) is
/// judged by its header fields alone: its name and its declared type.
fn is_container(head: &[u8]) -> bool {
    match MessageParser::default().parse(head) {
        Some(parsed) => parsed.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                || ct.ctype().eq_ignore_ascii_case("message")
        }),
        None => true,
    }
}

impl Plugin for AttachmentGuard {
    fn init(config: Config) -> Result<Self, String> {
        let mut s: Settings = config.parse()?;
        for e in &mut s.extensions {
            *e = e.trim_start_matches('.').to_string();
        }
        Ok(AttachmentGuard { s })
    }

    fn data(&self, _conn: &Connection, _env: &Envelope, msg: &Message) -> Outcome {
        let found = match header_section(msg) {
            // One part, not a container: its own header fields say all there is.
            Some(head) if !is_container(&head) => self.find(&head, 0),
            _ => self.find(&msg.raw(self.s.max_scan_bytes), 0),
        };
        let Some(hit) = found else {
            return Outcome::CONTINUE;
        };
        log::info(&format!("attachment-guard: forbidden attachment: {hit}"));
        match self.s.action {
            Action::Reject => Verdict::Reject(Some(Reply::new(
                554,
                "5.7.1",
                format!("Message refused: attachment not allowed ({hit})"),
            )))
            .into(),
            Action::Quarantine => {
                Verdict::quarantine(format!("forbidden attachment: {hit}")).into()
            }
        }
    }
}

wasmtp_plugin_sdk::export!(AttachmentGuard);
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::testing::{self, FakeHost};

    fn with_attachment(filename: &str, ctype: &str) -> String {
        format!(
            "From: a@x\nTo: b@y\nSubject: files\nMIME-Version: 1.0\n\
             Content-Type: multipart/mixed; boundary=\"BOUND\"\n\n\
             --BOUND\nContent-Type: text/plain\n\nsee attached\n\
             --BOUND\nContent-Type: {ctype}; name=\"{filename}\"\n\
             Content-Disposition: attachment; filename=\"{filename}\"\n\
             Content-Transfer-Encoding: base64\n\nTVqQAAMAAAAEAAAA\n--BOUND--\n"
        )
    }

    fn run(p: &AttachmentGuard, raw: &str) -> Verdict {
        let env = testing::envelope("a@x", &["b@y"]);
        p.data(
            &testing::connection("192.0.2.1"),
            &env,
            &testing::message(raw),
        )
        .verdict
    }

    #[test]
    fn refuses_dangerous_extension() {
        let _host = FakeHost::new();
        let p = AttachmentGuard::init(Config::empty()).unwrap();
        let v = run(
            &p,
            &with_attachment("invoice.pdf.EXE", "application/octet-stream"),
        );
        assert!(
            matches!(&v, Verdict::Reject(Some(r)) if r.text.contains("invoice.pdf.EXE")),
            "{v:?}"
        );
    }

    #[test]
    fn refuses_dangerous_content_type() {
        let _host = FakeHost::new();
        let p = AttachmentGuard::init(Config::empty()).unwrap();
        assert!(run(&p, &with_attachment("readme", "application/x-msdownload")).is_refusal());
    }

    #[test]
    fn allows_harmless_attachments_and_plain_mail() {
        let _host = FakeHost::new();
        let p = AttachmentGuard::init(Config::empty()).unwrap();
        assert_eq!(
            run(&p, &with_attachment("report.pdf", "application/pdf")),
            Verdict::Continue
        );
        assert_eq!(
            run(&p, "From: a@x\nSubject: hi\n\nhello\n"),
            Verdict::Continue
        );
    }

    /// Only a container (multipart, message/rfc822) is read whole; a single
    /// part is judged from its header section, and that judgment is what the
    /// whole message's parse gives, for files sent as the message itself,
    /// plain text, text that merely looks like MIME fields, and containers.
    #[test]
    fn a_single_part_is_judged_by_its_header_as_the_whole_parse_would() {
        let _host = FakeHost::new();
        let p = AttachmentGuard::init(Config::empty()).unwrap();
        let inner = with_attachment("run.js", "application/octet-stream");
        let cases = [
            ("From: a@x\r\nContent-Type: application/x-msdownload; name=\"tool\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n".to_string(), true),
            ("From: a@x\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"setup.EXE\"\n\nTVqQ\n".to_string(), true),
            ("From: a@x\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\n\r\nJVBERi0=\r\n".to_string(), false),
            ("From: a@x\r\nSubject: hi\r\n\r\nContent-Disposition: attachment; filename=\"evil.exe\"\r\n".to_string(), false),
            (format!("From: a@x\nContent-Type: message/rfc822\n\n{inner}"), true),
            (with_attachment("x.scr", "application/octet-stream"), true),
            ("\r\nno header\r\n".to_string(), false),
        ];
        for (raw, refused) in cases {
            assert_eq!(run(&p, &raw).is_refusal(), refused, "{raw:?}");
            assert_eq!(p.find(raw.as_bytes(), 0).is_some(), refused, "{raw:?}");
        }
        let head = |raw: &str| {
            let env = testing::message(raw);
            header_section(&env)
        };
        assert_eq!(
            head("A: b\r\n\r\nbody\r\n\r\nmore").as_deref(),
            Some(&b"A: b\r\n\r\n"[..])
        );
        // The host (and the fake one) hands over CRLF line ends.
        assert_eq!(head("A: b\n\nbody").as_deref(), Some(&b"A: b\r\n\r\n"[..]));
        assert_eq!(head("A: b\r\nno end"), None);
        assert!(is_container(
            b"Content-Type: Multipart/Mixed; boundary=x\r\n\r\n"
        ));
        assert!(!is_container(b"Content-Type: text/plain\r\n\r\n"));
    }

    #[test]
    fn nested_message_is_scanned() {
        let _host = FakeHost::new();
        let p = AttachmentGuard::init(Config::empty()).unwrap();
        let inner = with_attachment("run.js", "application/octet-stream");
        let outer = format!(
            "From: a@x\nSubject: fwd\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"OUT\"\n\n\
             --OUT\nContent-Type: text/plain\n\nforwarded\n--OUT\nContent-Type: message/rfc822\n\n{inner}\n--OUT--\n"
        );
        assert!(run(&p, &outer).is_refusal());
    }

    #[test]
    fn configured_list_and_quarantine() {
        let _host = FakeHost::new();
        let p = AttachmentGuard::init(testing::config(
            r#"{"extensions": [".docm"], "content_types": [], "action": "quarantine"}"#,
        ))
        .unwrap();
        assert!(matches!(
            run(&p, &with_attachment("a.docm", "application/octet-stream")),
            Verdict::Quarantine(_)
        ));
        assert_eq!(
            run(&p, &with_attachment("a.exe", "application/octet-stream")),
            Verdict::Continue
        );
    }
}
