//! Fuzz targets: one function per input surface a client reaches, each
//! panicking when a property fails. The cargo-fuzz crate in `fuzz/` runs
//! them under libFuzzer (nightly); the property tests below run the same
//! functions on generated inputs in every `cargo test --lib`, bounded to a
//! few seconds.
//!
//! Properties: no input panics a parser; no reply line exceeds 512 octets;
//! the DATA decoder's output and verdict do not depend on how the input is
//! split into reads, it never sees the end of data without `<CRLF>.<CRLF>`,
//! and never outputs more than its size limit; a whole session fed
//! arbitrary bytes answers only well-formed reply lines and ends.

use std::path::Path;
use std::sync::Arc;

use crate::smtp::address::{check_domain, parse_mailbox, parse_path};
use crate::smtp::reply::MAX_REPLY_LINE;
use crate::smtp::{Command, DataDecoder, DataEvent, Reply, parse_command};

/// Checks the wire form of replies: CRLF-terminated lines of at most
/// [`MAX_REPLY_LINE`] octets, each `NNN` then space or hyphen.
pub fn check_wire(wire: &[u8]) {
    for line in wire.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.len() <= MAX_REPLY_LINE,
            "reply line of {} octets",
            line.len()
        );
        let text = line
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("reply line without CRLF: {line:?}"));
        assert!(
            !text.contains(&b'\r')
                && text.len() >= 4
                && text[..3].iter().all(u8::is_ascii_digit)
                && (text[3] == b' ' || text[3] == b'-'),
            "malformed reply line {line:?}"
        );
    }
}

fn check_reply(r: &Reply) {
    let mut wire = Vec::new();
    r.encode(&mut wire);
    check_wire(&wire);
}

/// One command line: parsing never panics, and the reply the session
/// would build from it (an error, or an echo of what was parsed) fits.
pub fn command(line: &[u8]) {
    let parsed = parse_command(line);
    // The session refuses CR and LF in a command line before parsing, so
    // nothing parsed from such a line is ever echoed.
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return check_reply(&Reply::bare_line_ending_in_command());
    }
    let reply = match parsed {
        Err(e) => e.reply(),
        Ok(Command::Ehlo(name)) => Reply::ehlo("mx.test", &name, &["SIZE 1".into()]),
        Ok(Command::Helo(name)) => Reply::helo("mx.test", &name),
        Ok(Command::Mail(crate::smtp::Path::Mailbox(a), _))
        | Ok(Command::Rcpt(crate::smtp::Path::Mailbox(a), _)) => {
            check_reply(&Reply::no_such_user(&a.to_string()));
            Reply::sender_not_owned(&a.to_string())
        }
        Ok(Command::Auth(_, Some(initial))) => {
            if let crate::auth::Response::Data(d) = crate::auth::decode(&initial) {
                let _ = crate::auth::parse_plain(&d);
            }
            Reply::auth_challenge("")
        }
        Ok(Command::NotImplemented(v)) => Reply::not_implemented(v),
        Ok(_) => Reply::ok(),
    };
    check_reply(&reply);
}

/// One path argument: never panics; a parsed mailbox keeps the RFC 5321
/// length limits and reads back as itself.
pub fn address(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = check_domain(s);
    if let Ok(a) = parse_mailbox(s) {
        assert!(a.local.len() <= 64 && a.domain.len() <= 255, "{a:?}");
    }
    let Ok((path, rest)) = parse_path(s) else {
        return;
    };
    assert!(s.ends_with(rest), "rest {rest:?} is not a suffix of {s:?}");
    if let crate::smtp::Path::Mailbox(a) = path {
        assert!(a.local.len() <= 64 && a.domain.len() <= 255, "{a:?}");
        let again = parse_path(&format!("<{a}>")).map(|(p, r)| (p, r.to_string()));
        assert_eq!(again, Ok((crate::smtp::Path::Mailbox(a), String::new())));
    }
}

/// Decodes `input` fed in `chunks` (each a length; the rest goes last).
fn decode(input: &[u8], chunks: &[usize], max_size: u64) -> (Vec<u8>, Option<usize>, String) {
    let mut d = DataDecoder::new(1000, max_size);
    let mut out = Vec::new();
    let mut at = 0;
    let cuts = chunks.iter().copied().chain(std::iter::once(input.len()));
    for len in cuts {
        let end = (at + len).min(input.len());
        if let DataEvent::End { consumed } = d.feed(&input[at..end], &mut out) {
            assert!(consumed >= 1 && consumed <= end - at, "consumed {consumed}");
            return (out, Some(at + consumed), format!("{:?}", d.finish()));
        }
        assert!(out.len() as u64 <= max_size, "output over the size limit");
        at = end;
        if at == input.len() {
            break;
        }
    }
    (out, None, format!("{:?}", d.finish()))
}

/// DATA bytes (the first byte picks a small size limit, so the size
/// check is exercised): the same result however the input is split, no
/// end without `<CRLF>.<CRLF>`, output within the size limit.
pub fn data_decoder(data: &[u8]) {
    let Some((&limit, input)) = data.split_first() else {
        return;
    };
    let max_size = u64::from(limit) * 4;
    let whole = decode(input, &[], max_size);
    assert!(whole.0.len() as u64 <= max_size);
    if let Some(end) = whole.1 {
        // The data starts at a line start, as after the 354.
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(&input[..end]);
        assert!(framed.ends_with(b"\r\n.\r\n"), "End without <CRLF>.<CRLF>");
        let first = framed.windows(5).position(|w| w == b"\r\n.\r\n");
        assert_eq!(first, Some(framed.len() - 5), "End after the first marker");
    } else {
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(input);
        assert!(
            !framed.windows(5).any(|w| w == b"\r\n.\r\n"),
            "missed the end"
        );
    }
    // Byte by byte, and split at every position.
    assert_eq!(decode(input, &vec![1; input.len()], max_size), whole);
    for cut in 1..input.len().min(256) {
        assert_eq!(decode(input, &[cut], max_size), whole, "split at {cut}");
    }
}

/// A whole session over an in-memory stream, with a real [`ServerCtx`]
/// (queue store, plugin host without plugins, self-signed certificate) in
/// a scratch directory. Build it once and feed it many inputs.
///
/// [`ServerCtx`]: crate::session::ServerCtx
pub struct SessionHarness {
    rt: tokio::runtime::Runtime,
    ctx: Arc<crate::session::ServerCtx>,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl SessionHarness {
    /// A server context with its data in `data_dir`. AUTH is offered over
    /// plaintext (the peer is loopback) so fuzzing reaches it.
    pub fn new(data_dir: &Path) -> SessionHarness {
        let config = format!(
            "[server]\nhostname = \"mx.test\"\ndata_dir = \"{}\"\n\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n\n\
             [local]\ndomains = [\"example.test\"]\ncatch_all = true\n\n\
             [limits]\nmax_message_size = \"64KiB\"\n\n\
             [auth]\nallow_plaintext_on_loopback = true\nfailure_delay = \"0s\"\n\n\
             [timeouts]\ncommand = \"5s\"\ndata = \"5s\"\n\n\
             [authentication]\nenable = false\n",
            data_dir.display()
        );
        let settings = Arc::new(
            crate::config::Settings::parse(&config, "fuzz.toml").expect("fuzz config parses"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let ctx = rt.block_on(async {
            let store =
                crate::queue::Store::open(&settings.queue.dir, false, settings.queue.cache_size)
                    .expect("store");
            let plugins = crate::plugin::PluginHost::new(&settings, store.db()).expect("plugins");
            let (queue, _task) = crate::queue::QueueManager::start(
                store.clone(),
                settings.clone(),
                plugins.clone(),
                shutdown,
            )
            .expect("queue");
            let tls = crate::tls::Tls::start(&settings.tls, &settings.hostname).expect("tls");
            let settings_budget = settings.limits.max_bytes_in_flight;
            let mailauth = Arc::new(crate::mailauth::MailAuth::new(&settings).expect("resolver"));
            crate::session::ServerCtx {
                users: Arc::new(crate::users::UserDb::new(
                    settings.auth.users_file.clone(),
                    1,
                    settings.auth.verification_wait,
                )),
                auth_throttle: Arc::new(crate::auth::Throttle::new(
                    settings.auth.failure_delay,
                    settings.limits.ipv6_prefix,
                )),
                settings,
                store,
                queue,
                plugins,
                tls: Arc::new(tls),
                mailauth,
                budget: crate::session::body::Budget::new(settings_budget),
            }
        });
        SessionHarness {
            rt,
            ctx: Arc::new(ctx),
            _stop: stop,
        }
    }

    /// Feeds `input` as the client's bytes, then closes the client's side;
    /// checks every reply line and that the session ends. Returns what the
    /// server sent.
    pub fn run(&self, input: &[u8]) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let info = crate::session::ConnInfo {
            id: "FUZZ".into(),
            peer: "127.0.0.1:40000".parse().expect("address"),
            local: "127.0.0.1:25".parse().expect("address"),
            listener: "fuzz".into(),
            role: crate::config::Role::Mx,
            tls: None,
            auth: None,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        };
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let session = crate::session::Session::new(server, self.ctx.clone(), info, shutdown);
        let output = self.rt.block_on(async move {
            let (mut rd, mut wr) = tokio::io::split(client);
            let talk = async {
                // The session may close first (QUIT, 421): a failed write is fine.
                let _ = wr.write_all(input).await;
                let _ = wr.shutdown().await;
            };
            let listen = async {
                let mut out = Vec::new();
                let _ = rd.read_to_end(&mut out).await;
                out
            };
            let run = async {
                drop(session.run().await);
            };
            let all = async { tokio::join!(talk, listen, run).1 };
            tokio::time::timeout(std::time::Duration::from_secs(10), all)
                .await
                .expect("the session ended")
        });
        check_wire(&output);
        output
    }
}

#[cfg(test)]
mod tests {
    //! The fuzz targets on generated inputs: random bytes, and inputs built
    //! from SMTP pieces by the `arbitrary` crate from random bytes, so that
    //! the parsers get past their first checks. Seeded, so a failure
    //! repeats; each test runs well under a second.

    use arbitrary::{Arbitrary, Unstructured};
    use rand::{Rng, SeedableRng};

    const PIECES: &[&[u8]] = &[
        b"EHLO ",
        b"HELO ",
        b"MAIL FROM:",
        b"RCPT TO:",
        b"DATA",
        b"BDAT ",
        b"RSET",
        b"NOOP",
        b"QUIT",
        b"AUTH PLAIN ",
        b"AUTH LOGIN",
        b"STARTTLS",
        b"VRFY ",
        b"<",
        b">",
        b"@",
        b"\"",
        b"\\",
        b".",
        b"\r\n",
        b"\r",
        b"\n",
        b"\r\n.\r\n",
        b".\r\n",
        b"..",
        b" ",
        b":",
        b",",
        b"example.test",
        b"a",
        b"[127.0.0.1]",
        b"[IPv6:::1]",
        b"SIZE=",
        b"BODY=8BITMIME",
        b"SMTPUTF8",
        b"LAST",
        b"AUTH=",
        b"123",
        b"\0",
        b"\xc3\xa9",
        b"\xff",
        b"=",
        b"*",
        b"AGFsaWNlAHB3",
        b"postmaster",
    ];

    /// A sequence of pieces, repeated runs and raw bytes.
    struct Smtpish(Vec<u8>);

    impl<'a> Arbitrary<'a> for Smtpish {
        fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
            let mut out = Vec::new();
            while !u.is_empty() && out.len() < 2048 {
                match u.int_in_range(0..=9u8)? {
                    0 => out.extend_from_slice(<&[u8]>::arbitrary(u)?),
                    1 => {
                        let piece = *u.choose(PIECES)?;
                        for _ in 0..u.int_in_range(1..=300u16)? {
                            out.extend_from_slice(piece);
                        }
                    }
                    _ => out.extend_from_slice(u.choose(PIECES)?),
                }
            }
            Ok(Smtpish(out))
        }
    }

    /// Calls `target` on `n` generated inputs (half raw, half built).
    fn run(n: usize, seed: u64, target: impl Fn(&[u8])) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for i in 0..n {
            let mut raw = vec![0u8; rng.random_range(0..600)];
            rng.fill(&mut raw[..]);
            let input = if i % 2 == 0 {
                raw
            } else {
                Smtpish::arbitrary_take_rest(Unstructured::new(&raw)).map_or(raw.clone(), |s| s.0)
            };
            target(&input);
        }
    }

    /// The seed corpus shipped for cargo-fuzz, split into lines.
    fn corpus_lines() -> Vec<Vec<u8>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/session");
        let mut lines = Vec::new();
        for e in std::fs::read_dir(dir).expect("fuzz/corpus/session") {
            let text = std::fs::read(e.expect("corpus entry").path()).expect("corpus file");
            lines.extend(
                text.split(|&b| b == b'\n')
                    .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec()),
            );
        }
        lines
    }

    #[test]
    fn command_parser() {
        for line in corpus_lines() {
            super::command(&line);
        }
        run(20_000, 1, super::command);
        // Long echoes: the longest command line a session accepts.
        for verb in [
            "EHLO ",
            "HELO ",
            "MAIL FROM:<",
            "XFOO ",
            "MAIL FROM:<a@b.test> X",
        ] {
            let mut l = verb.as_bytes().to_vec();
            l.resize(510, b'a');
            super::command(&l);
        }
    }

    #[test]
    fn address_parser() {
        run(20_000, 2, |b| {
            super::address(b);
            let mut bracketed = b"<".to_vec();
            bracketed.extend_from_slice(b);
            bracketed.push(b'>');
            super::address(&bracketed);
        });
        for s in [
            r#"<"a\"b>c"@x.test>"#,
            "<@a.test,@b.test:u@c.test> SIZE=1",
            "<é@ü.test>",
        ] {
            super::address(s.as_bytes());
        }
    }

    #[test]
    fn data_decoder() {
        run(600, 3, super::data_decoder);
        for line in corpus_lines() {
            let mut d = vec![255];
            d.extend_from_slice(&line);
            d.extend_from_slice(b"\r\n");
            super::data_decoder(&d);
        }
    }

    #[test]
    fn whole_session() {
        let dir = tempfile::tempdir().unwrap();
        let h = super::SessionHarness::new(dir.path());
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/session");
        for e in std::fs::read_dir(corpus).unwrap() {
            h.run(&std::fs::read(e.unwrap().path()).unwrap());
        }
        // The harness is a real server: a real transaction is queued.
        let wire = h.run(&std::fs::read(format!("{corpus}/transaction")).unwrap());
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("\r\n250 2.0.0 Ok: queued as "), "{wire}");
        assert!(wire.ends_with("221 2.0.0 Bye\r\n"), "{wire}");
        // AUTH with a real password check is slow on purpose; keep few.
        run(150, 4, |b| drop(h.run(b)));
    }
}
