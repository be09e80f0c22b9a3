//! Delivery status notifications: which recipients of an attempt are
//! reported to the sender (RFC 3461 NOTIFY), and the report itself, an
//! RFC 3464 `message/delivery-status` inside an RFC 6522
//! `multipart/report`. Every DSN text lives here.
//!
//! A DSN is an ordinary queued message from the null sender to the
//! original sender; the queue manager decides when one is due and queues
//! it. What is returned: a failure DSN carries the whole message unless
//! the sender asked for `RET=HDRS` or the message is over the size limit
//! (then only its headers, as Postfix does); delay and success DSNs carry
//! the headers only, since the message is (or will be) delivered anyway.

use chrono::{DateTime, Utc};

use super::{QueuedMessage, QueuedRcpt, RcptStatus, Route, new_queue_id};
use crate::config::Settings;
use crate::delivery::Outcome;
use crate::delivery::local::{Resolution, resolve};
use crate::smtp::Path;
use crate::smtp::command::{Notify, Ret};

/// What happened to one reported recipient (RFC 3464 §2.3.3 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up for good.
    Failed,
    /// Not delivered yet; still being retried.
    Delayed,
    /// Stored in a local mailbox.
    Delivered,
    /// Handed to a server that does not send DSNs itself.
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// Which kind of DSN a report is, for the subject and logs (`kind=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// At least one recipient failed.
    Failure,
    /// Some recipients are delayed, none failed.
    Delay,
    /// Only deliveries are reported.
    Success,
}

impl Kind {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Delay => "delay",
            Kind::Success => "success",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Kind::Failure => "Undelivered Mail Returned to Sender",
            Kind::Delay => "Delayed Mail (still being retried)",
            Kind::Success => "Successful Mail Delivery Report",
        }
    }

    fn intro(self) -> &'static str {
        match self {
            Kind::Failure => {
                "Your message could not be delivered to one or more recipients.\r\n\
                 The mail system has given up on the recipients listed below."
            }
            Kind::Delay => {
                "Your message has not been delivered yet to the recipients listed\r\n\
                 below. The mail system is still trying; you do not need to send it\r\n\
                 again."
            }
            Kind::Success => "Your message was delivered to the recipients listed below.",
        }
    }
}

/// The failure recorded for every pending recipient of a message an
/// operator bounces (`wasmtp queue bounce`); the DSN's diagnostic.
pub fn removed_by_operator() -> Outcome {
    Outcome::permanent(
        "5.0.0",
        "removed from the queue by the mail system's administrator; delivery was not completed",
    )
}

/// One recipient in a report: its index in the message and what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Index into `QueuedMessage::recipients`.
    pub rcpt: usize,
    /// What the DSN says about it.
    pub action: Action,
}

/// NOTIFY of a recipient, with RFC 3461 §4.1's default when none was
/// given: failure and delay, not success.
fn wants(notify: Option<Notify>) -> Notify {
    notify.unwrap_or(Notify {
        success: false,
        failure: true,
        delay: true,
    })
}

/// The recipients one attempt's DSN reports: those that failed for good in
/// it, those delivered locally that asked for SUCCESS, and, when a delay
/// warning is due, those still pending. NOTIFY is honoured per recipient;
/// a message from the null sender is never reported on (RFC 3461 §6.2, RFC
/// 5321 §4.5.5: no bounce of a bounce). A recipient delivered to another
/// server is not reported here: the outbound client passes NOTIFY on, so
/// the next hop reports the success.
pub fn entries(msg: &QueuedMessage, attempt: &[(usize, Outcome)], delay_due: bool) -> Vec<Entry> {
    if msg.sender.is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, outcome) in attempt {
        let r = &msg.recipients[*i];
        let want = wants(r.notify);
        let action = match (&r.status, outcome) {
            (RcptStatus::Failed(_), _) if want.failure => Action::Failed,
            (RcptStatus::Delivered(_), Outcome::Delivered(_))
                if want.success && r.route == Route::Local =>
            {
                Action::Delivered
            }
            _ => continue,
        };
        out.push(Entry { rcpt: *i, action });
    }
    if delay_due {
        out.extend(
            msg.recipients
                .iter()
                .enumerate()
                .filter(|(_, r)| r.status == RcptStatus::Pending && wants(r.notify).delay)
                .map(|(rcpt, _)| Entry {
                    rcpt,
                    action: Action::Delayed,
                }),
        );
    }
    out
}

/// One DSN about one message.
pub struct Report<'a> {
    /// Our host name (`Reporting-MTA`, `MAILER-DAEMON@`).
    pub hostname: &'a str,
    /// The message reported on, its state recorded.
    pub msg: &'a QueuedMessage,
    /// Its body as queued.
    pub body: &'a [u8],
    /// The recipients reported.
    pub entries: &'a [Entry],
    /// Unix time of this attempt.
    pub now: i64,
    /// Unix time when retrying stops (`Will-Retry-Until`).
    pub retry_until: i64,
    /// The largest message returned whole.
    pub max_return: u64,
}

impl Report<'_> {
    /// The worst action reported decides the kind.
    pub fn kind(&self) -> Kind {
        let has = |a| self.entries.iter().any(|e| e.action == a);
        if has(Action::Failed) {
            Kind::Failure
        } else if has(Action::Delayed) {
            Kind::Delay
        } else {
            Kind::Success
        }
    }

    /// True if the whole message goes back, not only its headers.
    fn returns_full(&self) -> bool {
        self.kind() == Kind::Failure
            && self.msg.ret != Some(Ret::Hdrs)
            && self.body.len() as u64 <= self.max_return
    }

    /// The DSN as it is queued (CRLF line endings), with Message-ID
    /// `<id@hostname>`.
    pub fn render(&self, id: &str) -> Vec<u8> {
        let host = self.hostname;
        let kind = self.kind();
        let mut boundary = format!("{id}.{}/{host}", self.now);
        while memchr::memmem::find(self.body, boundary.as_bytes()).is_some() {
            boundary.push_str("=_");
        }
        let human = self.human();
        let head = [
            format!("Date: {}", date(self.now)),
            format!("From: Mail Delivery System <MAILER-DAEMON@{host}>"),
            format!("To: <{}>", self.msg.return_path()),
            format!("Subject: {}", kind.subject()),
            format!("Message-ID: <{id}@{host}>"),
            "Auto-Submitted: auto-replied".into(),
            "MIME-Version: 1.0".into(),
            "Content-Type: multipart/report; report-type=delivery-status;".into(),
            format!("\tboundary=\"{boundary}\""),
            String::new(),
            "This is a MIME-encapsulated message.".into(),
            String::new(),
            format!("--{boundary}"),
            "Content-Description: Notification".into(),
            "Content-Type: text/plain; charset=utf-8".into(),
            format!("Content-Transfer-Encoding: {}", encoding(human.as_bytes())),
            String::new(),
        ];
        let mut out = head.join("\r\n");
        out.push_str("\r\n");
        out.push_str(&human);
        out.push_str(&format!(
            "\r\n--{boundary}\r\nContent-Description: Delivery report\r\n\
             Content-Type: message/delivery-status\r\n\r\n"
        ));
        out.push_str(&self.delivery_status());
        out.push_str(&format!("--{boundary}\r\n"));
        let mut bytes = out.into_bytes();
        self.returned(&mut bytes);
        bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        bytes
    }

    /// The part for people: what happened, then each recipient and why.
    fn human(&self) -> String {
        let mut s = format!(
            "This is the mail system at host {}.\r\n\r\n{}\r\n",
            self.hostname,
            self.kind().intro()
        );
        if self.kind() == Kind::Delay {
            s.push_str(&format!(
                "It will keep trying until {}.\r\n",
                date(self.retry_until)
            ));
        }
        s.push_str("\r\n");
        for e in self.entries {
            let r = &self.msg.recipients[e.rcpt];
            s.push_str(&format!(
                "<{}>: {}\r\n",
                clean(&r.address),
                e.action.as_str()
            ));
            let why = match e.action {
                Action::Delivered => format!("delivered to mailbox {}", r.mailbox),
                Action::Relayed => "relayed to a server that does not report delivery".into(),
                Action::Failed | Action::Delayed => match (&r.status, &r.failure) {
                    (RcptStatus::Failed(text), _) => text.clone(),
                    (_, Some(f)) => f.text.clone(),
                    _ => "not delivered yet".into(),
                },
            };
            s.push_str(&format!("    {}\r\n", clean(&why)));
        }
        s
    }

    /// The `message/delivery-status` fields (RFC 3464 §2.2, §2.3).
    fn delivery_status(&self) -> String {
        let msg = self.msg;
        let mut s = format!("Reporting-MTA: dns; {}\r\n", self.hostname);
        if let Some(envid) = &msg.envid {
            s.push_str(&format!("Original-Envelope-Id: {}\r\n", clean(envid)));
        }
        s.push_str(&format!("Arrival-Date: {}\r\n\r\n", date(msg.received_at)));
        for e in self.entries {
            let r = &msg.recipients[e.rcpt];
            s.push_str(&recipient_fields(r, e.action, self.now));
            if e.action == Action::Delayed {
                s.push_str(&format!("Will-Retry-Until: {}\r\n", date(self.retry_until)));
            }
            s.push_str("\r\n");
        }
        s
    }

    /// The third part: the whole message or its header block.
    fn returned(&self, out: &mut Vec<u8>) {
        let (description, ctype, content) = if self.returns_full() {
            ("Undelivered Message", "message/rfc822", self.body)
        } else {
            let end =
                memchr::memmem::find(self.body, b"\r\n\r\n").map_or(self.body.len(), |i| i + 2);
            ("Message Headers", "text/rfc822-headers", &self.body[..end])
        };
        let cte = encoding(content);
        out.extend_from_slice(
            format!(
                "Content-Description: {description}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(content);
        if !content.ends_with(b"\r\n") && !content.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The Content-Transfer-Encoding of a part: its lines are already bounded
/// (`limits.text_line_length`), so only 8-bit octets matter.
fn encoding(content: &[u8]) -> &'static str {
    if content.is_ascii() { "7bit" } else { "8bit" }
}

/// The per-recipient fields of one recipient.
fn recipient_fields(r: &QueuedRcpt, action: Action, now: i64) -> String {
    let mut s = String::new();
    if let Some(orcpt) = &r.orcpt {
        s.push_str(&format!("Original-Recipient: {}\r\n", clean(orcpt)));
    }
    s.push_str(&format!(
        "Final-Recipient: rfc822; {}\r\n",
        clean(&r.address)
    ));
    s.push_str(&format!("Action: {}\r\n", action.as_str()));
    let status = match (action, &r.failure) {
        (Action::Delivered | Action::Relayed, _) => "2.0.0".to_string(),
        (_, Some(f)) => clean(&f.status),
        (Action::Failed, None) => "5.0.0".into(),
        (Action::Delayed, None) => "4.0.0".into(),
    };
    s.push_str(&format!("Status: {status}\r\n"));
    let failure = r
        .failure
        .as_ref()
        .filter(|_| matches!(action, Action::Failed | Action::Delayed));
    if let Some(f) = failure {
        if let Some(mta) = &f.remote_mta {
            s.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(mta)));
        }
        match &f.remote_reply {
            Some(reply) => s.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", clean(reply))),
            None => s.push_str(&format!(
                "Diagnostic-Code: X-wasmtp; {}\r\n",
                clean(&f.text)
            )),
        }
    }
    s.push_str(&format!("Last-Attempt-Date: {}\r\n", date(now)));
    s
}

/// One header-safe line: control characters become spaces and the text is
/// cut so the field stays far below 998 octets.
fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 800 {
        let mut cut = 800;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// RFC 5322 date of a unix time.
fn date(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc2822()
}

/// The queue record of a DSN for `original`: from the null sender to the
/// original sender, routed the way a session would route that address
/// (our domains locally, others to the outbound client). None when the
/// sender is in one of our domains but has no mailbox: there is nowhere
/// to send it.
pub fn envelope(settings: &Settings, original: &QueuedMessage) -> Option<QueuedMessage> {
    let sender = original.sender.clone()?;
    let (mailbox, route) = match resolve(&settings.local, &Path::Mailbox(sender.clone())) {
        Resolution::Local(mailbox) => (mailbox, Route::Local),
        Resolution::NotLocal => (String::new(), Route::Remote),
        Resolution::UnknownUser => return None,
    };
    let now = super::now_secs();
    Some(QueuedMessage {
        id: new_queue_id(),
        received_at: now,
        sender: None,
        recipients: vec![QueuedRcpt::pending(sender.to_string(), mailbox, route)],
        size: 0,
        next_attempt: now,
        ret: None,
        envid: None,
        delay_dsn_sent: false,
        held: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Failure;
    use mail_parser::{MessageParser, MimeHeaders};

    const BODY: &[u8] =
        b"Received: from x\r\nSubject: hello\r\nFrom: <a@example.test>\r\n\r\nthe body text\r\n";

    fn rcpt(address: &str, status: RcptStatus, route: Route) -> QueuedRcpt {
        let mailbox = address.split('@').next().unwrap().into();
        QueuedRcpt {
            status,
            attempts: 1,
            ..QueuedRcpt::pending(address.into(), mailbox, route)
        }
    }

    fn message(recipients: Vec<QueuedRcpt>) -> QueuedMessage {
        QueuedMessage {
            id: "ORIG".into(),
            received_at: 1_700_000_000,
            sender: Some(crate::smtp::Address {
                local: "a".into(),
                domain: "example.test".into(),
            }),
            recipients,
            size: BODY.len() as u64,
            next_attempt: 0,
            ret: None,
            envid: None,
            delay_dsn_sent: false,
            held: false,
        }
    }

    fn report<'a>(msg: &'a QueuedMessage, entries: &'a [Entry], max: u64) -> Report<'a> {
        Report {
            hostname: "mx.test",
            msg,
            body: BODY,
            entries,
            now: 1_700_000_100,
            retry_until: 1_700_400_000,
            max_return: max,
        }
    }

    /// The parts of a parsed report: (content type, raw contents).
    fn parts(raw: &[u8]) -> Vec<(String, String)> {
        let m = MessageParser::default().parse(raw).unwrap();
        m.parts
            .iter()
            .skip(1)
            .map(|p| {
                let ct = p.content_type().unwrap();
                (
                    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")),
                    String::from_utf8_lossy(p.contents()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn failure_report_parses() {
        let mut failed = rcpt(
            "b@remote.test",
            RcptStatus::Failed("no".into()),
            Route::Remote,
        );
        failed.failure = Some(Failure {
            text: "mx.remote.test said: 550 5.1.1 unknown user".into(),
            status: "5.1.1".into(),
            remote_mta: Some("mx.remote.test".into()),
            remote_reply: Some("550 5.1.1 unknown user".into()),
        });
        failed.orcpt = Some("rfc822;B@remote.test".into());
        let mut msg = message(vec![failed]);
        msg.envid = Some("QQ314159".into());
        let entries = [Entry {
            rcpt: 0,
            action: Action::Failed,
        }];
        let raw = report(&msg, &entries, 1 << 20).render("DSNID");
        assert!(
            !raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "bare LF"
        );
        let m = MessageParser::default().parse(&raw[..]).unwrap();
        let ct = m.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
        let from = m.from().unwrap().first().unwrap().address().unwrap();
        assert_eq!(from, "MAILER-DAEMON@mx.test");
        assert_eq!(
            m.to().unwrap().first().unwrap().address(),
            Some("a@example.test")
        );
        assert_eq!(m.message_id(), Some("DSNID@mx.test"));
        assert_eq!(
            m.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert!(m.date().is_some());
        let parts = parts(&raw);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0].0, "text/plain");
        assert!(
            parts[0].1.contains("<b@remote.test>: failed"),
            "{}",
            parts[0].1
        );
        assert_eq!(parts[1].0, "message/delivery-status");
        for field in [
            "Reporting-MTA: dns; mx.test\r\n",
            "Original-Envelope-Id: QQ314159\r\n",
            "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n",
            "Original-Recipient: rfc822;B@remote.test\r\n",
            "Final-Recipient: rfc822; b@remote.test\r\n",
            "Action: failed\r\n",
            "Status: 5.1.1\r\n",
            "Remote-MTA: dns; mx.remote.test\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 unknown user\r\n",
            "Last-Attempt-Date: ",
        ] {
            assert!(parts[1].1.contains(field), "{field:?} in {}", parts[1].1);
        }
        assert!(!parts[1].1.contains("Will-Retry-Until"));
        // The whole message comes back by default.
        assert_eq!(parts[2].0, "message/rfc822");
        let returned = m.parts.iter().find_map(|p| p.message()).unwrap();
        assert_eq!(returned.subject(), Some("hello"));
        assert!(parts[2].1.contains("the body text"));
    }

    #[test]
    fn headers_only_for_ret_hdrs_oversize_and_delay() {
        let mut msg = message(vec![rcpt(
            "b@example.test",
            RcptStatus::Failed("x".into()),
            Route::Local,
        )]);
        let failed = [Entry {
            rcpt: 0,
            action: Action::Failed,
        }];
        let third = |msg: &QueuedMessage, entries: &[Entry], max| {
            parts(&report(msg, entries, max).render("D"))[2].clone()
        };
        let full = third(&msg, &failed, 1 << 20);
        assert_eq!(full.0, "message/rfc822");
        // Bigger than the limit: headers only.
        let (ct, text) = third(&msg, &failed, 10);
        assert_eq!(ct, "text/rfc822-headers");
        assert!(text.contains("Subject: hello") && !text.contains("the body text"));
        msg.ret = Some(Ret::Hdrs);
        assert_eq!(third(&msg, &failed, 1 << 20).0, "text/rfc822-headers");
        msg.ret = Some(Ret::Full);
        assert_eq!(third(&msg, &failed, 1 << 20).0, "message/rfc822");
        // A delay DSN: headers only, whatever RET says.
        msg.recipients[0].status = RcptStatus::Pending;
        msg.recipients[0].failure = Some(Failure::local("4.3.0", "disk trouble"));
        let delayed = [Entry {
            rcpt: 0,
            action: Action::Delayed,
        }];
        let raw = report(&msg, &delayed, 1 << 20).render("D");
        let m = MessageParser::default().parse(&raw[..]).unwrap();
        assert_eq!(m.subject(), Some("Delayed Mail (still being retried)"));
        let p = parts(&raw);
        assert_eq!(p[2].0, "text/rfc822-headers");
        for field in [
            "Action: delayed\r\n",
            "Status: 4.3.0\r\n",
            "Diagnostic-Code: X-wasmtp; disk trouble\r\n",
            "Will-Retry-Until: ",
        ] {
            assert!(p[1].1.contains(field), "{field:?} in {}", p[1].1);
        }
        assert!(p[0].1.contains("disk trouble"));
    }

    #[test]
    fn who_is_reported() {
        let delivered = Outcome::Delivered("mailbox".into());
        let failed = Outcome::permanent("5.1.3", "bad");
        let deferred = Outcome::temporary("4.3.0", "later");
        let mut msg = message(vec![
            rcpt(
                "f@example.test",
                RcptStatus::Failed("bad".into()),
                Route::Local,
            ),
            rcpt("d@example.test", RcptStatus::Delivered(1), Route::Local),
            rcpt("r@remote.test", RcptStatus::Delivered(1), Route::Remote),
            rcpt("p@example.test", RcptStatus::Pending, Route::Local),
        ]);
        let attempt = [
            (0, failed.clone()),
            (1, delivered.clone()),
            (2, delivered.clone()),
            (3, deferred.clone()),
        ];
        let actions = |msg: &QueuedMessage, delay| -> Vec<(usize, Action)> {
            entries(msg, &attempt, delay)
                .into_iter()
                .map(|e| (e.rcpt, e.action))
                .collect()
        };
        // Default NOTIFY: failure and delay, no success.
        assert_eq!(actions(&msg, false), [(0, Action::Failed)]);
        assert_eq!(
            actions(&msg, true),
            [(0, Action::Failed), (3, Action::Delayed)]
        );
        // NOTIFY=SUCCESS: a local delivery is reported; a remote one is the
        // next hop's to report.
        let success = Notify {
            success: true,
            ..Notify::default()
        };
        for r in &mut msg.recipients {
            r.notify = Some(success);
        }
        assert_eq!(actions(&msg, true), [(1, Action::Delivered)]);
        // NOTIFY=NEVER: nothing.
        for r in &mut msg.recipients {
            r.notify = Some(Notify::default());
        }
        assert!(actions(&msg, true).is_empty());
        // The null sender never gets a DSN.
        for r in &mut msg.recipients {
            r.notify = None;
        }
        msg.sender = None;
        assert!(actions(&msg, true).is_empty());
    }

    #[test]
    fn header_fields_stay_one_line() {
        let mut r = rcpt(
            "b@example.test",
            RcptStatus::Failed("x\r\nBcc: evil".into()),
            Route::Local,
        );
        r.failure = Some(Failure::local("5.0.0", "x\r\nBcc: evil"));
        let msg = message(vec![r]);
        let entries = [Entry {
            rcpt: 0,
            action: Action::Failed,
        }];
        let raw = report(&msg, &entries, 0).render("D");
        let text = String::from_utf8(raw).unwrap();
        assert!(!text.contains("\r\nBcc:"), "{text}");
    }
}
