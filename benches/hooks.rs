//! Hook dispatch cost: one call into a live instance, one call in a fresh
//! instance (instantiate + init + call), and a whole transaction (connect,
//! ehlo, mail-from, rcpt, data of a 10 KiB message, deliver) through the six
//! example plugins, and what one Python or JavaScript plugin adds (its
//! instance made in the transaction, and made ahead by the standby thread).
//! Needs the plugins built (`scripts/test` or
//! `cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wasmtp::config::Settings;
use wasmtp::plugin::bindings::wasmtp::plugin::types as wit;
use wasmtp::plugin::message::MessageData;
use wasmtp::plugin::run::Decision;
use wasmtp::plugin::{PluginHost, PluginSession, TxView};
use wasmtp::smtp::reply::Reply;

const WASM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/plugins/target/wasm32-wasip2/release"
);

fn host(plugins: &str) -> Arc<PluginHost> {
    let cfg = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[server]\ndata_dir = \"{}\"\n{plugins}",
        std::env::temp_dir().join("wasmtp-bench").display()
    );
    let settings = Settings::parse(&cfg, "bench.toml").expect("bench config");
    let db = sled::Config::new().temporary(true).open().expect("sled");
    PluginHost::new(&settings, db).expect("plugins load (build them first)")
}

/// The six example plugins at their hooks; `rest` is added to each
/// `[[plugin]]` table.
fn six(rest: &str) -> String {
    let p = |name: &str, file: &str, keys: &str| {
        format!("[[plugin]]\nname = \"{name}\"\npath = \"{WASM}/{file}\"\n{rest}{keys}\n")
    };
    [
        p(
            "rate-limit",
            "rate_limit.wasm",
            "hooks = [\"connect\", \"mail-from\"]\ngrants = [\"kv\"]",
        ),
        p(
            "dnsbl",
            "dnsbl.wasm",
            "hooks = [\"connect\", \"rcpt\"]\ngrants = [\"dns\"]",
        ),
        p(
            "greylist",
            "greylist.wasm",
            "hooks = [\"rcpt\"]\ngrants = [\"kv\", \"clock\"]",
        ),
        p(
            "router",
            "router.wasm",
            "hooks = [\"rcpt\", \"deliver\"]\n[plugin.config]\nlocal_domains = [\"example.test\"]",
        ),
        p(
            "attachment-guard",
            "attachment_guard.wasm",
            "hooks = [\"data\"]",
        ),
        p("spam-score", "spam_score.wasm", "hooks = [\"data\"]"),
    ]
    .concat()
}

/// rate-limit (counting every client), router and spam-score, as in
/// `scripts/bench`; `rest` is added to each `[[plugin]]` table.
fn three(rest: &str) -> String {
    let p = |name: &str, file: &str, keys: &str| {
        format!("[[plugin]]\nname = \"{name}\"\npath = \"{WASM}/{file}\"\n{rest}{keys}\n")
    };
    [
        p(
            "rate-limit",
            "rate_limit.wasm",
            "hooks = [\"connect\", \"mail-from\"]\ngrants = [\"kv\"]\n[plugin.config]\nexempt = []\nmax_connections = 100000000\nmax_messages = 100000000",
        ),
        p(
            "router",
            "router.wasm",
            "hooks = [\"rcpt\", \"deliver\"]\n[plugin.config]\nlocal_domains = [\"example.test\"]",
        ),
        p("spam-score", "spam_score.wasm", "hooks = [\"data\"]"),
    ]
    .concat()
}

/// A decision, after checking it is not what a failed call turns into (the
/// plugins here keep the default `on_error = "tempfail"`): a bench of calls
/// that trap or time out would measure the wrong thing.
fn ok(d: Decision) -> Decision {
    assert_ne!(
        d,
        Decision::Tempfail(Reply::plugin_failed_tempfail()),
        "a plugin call failed"
    );
    d
}

/// Fails the bench if any plugin of `host` trapped or timed out, or was
/// never called while others were (a host nobody called is a bench left
/// out by a name filter).
fn no_failures(host: &PluginHost) {
    let stats = host.stats_summary();
    if stats.iter().all(|(_, calls, _, _)| *calls == 0) {
        return;
    }
    for (plugin, calls, traps, timeouts) in stats {
        assert!(
            calls > 0 && traps == 0 && timeouts == 0,
            "{plugin}: {calls} calls, {traps} traps, {timeouts} timeouts"
        );
    }
}

fn conn() -> wit::Connection {
    wit::Connection {
        session_id: "bench".into(),
        peer_ip: "127.0.0.1".into(),
        peer_port: 40000,
        local_ip: "127.0.0.1".into(),
        local_port: 25,
        listener: "mx".into(),
        tls: None,
        authenticated: None,
        helo: Some("client.test".into()),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let conn = conn();
    let env = wit::Envelope {
        sender: "a@example.test".into(),
        sender_params: vec![],
        recipients: vec![wit::Recipient {
            address: "u@example.test".into(),
            params: vec![],
        }],
    };
    let mut body = b"From: a@example.test\r\nTo: u@example.test\r\nSubject: bench\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <b@x>\r\n\r\n".to_vec();
    while body.len() < 10 * 1024 {
        body.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n",
        );
    }

    // reuse = 0: router's manifest says stateless, which would make the
    // "fresh" call below take a warm instance.
    let one = host(&format!(
        "[[plugin]]\nname = \"router\"\npath = \"{WASM}/router.wasm\"\nhooks = [\"ehlo\"]\nreuse = 0\n"
    ));
    let mut live = PluginSession::new(one.clone(), "bench".into());
    assert_eq!(
        ok(rt.block_on(live.ehlo(&conn, "client.test"))),
        Decision::Continue
    );
    c.bench_function("hook call, live instance (router, ehlo)", |b| {
        b.iter(|| ok(rt.block_on(live.ehlo(&conn, "client.test"))))
    });
    c.bench_function("hook call, fresh instance (router, ehlo)", |b| {
        b.iter(|| {
            live.end_tx();
            ok(rt.block_on(live.ehlo(&conn, "client.test")))
        })
    });
    no_failures(&one);

    let whole = |c: &mut Criterion, name: &str, plugins: &str| {
        let h = host(plugins);
        c.bench_function(name, |b| {
            // A fresh message per transaction, as the server has: nothing
            // the host caches per message carries over between iterations.
            b.iter(|| {
                rt.block_on(transaction(
                    &h,
                    &conn,
                    &env,
                    &MessageData::new(body.clone()),
                ))
            })
        });
        no_failures(&h);
    };
    // What a transaction waits for when its instances were made ahead
    // (`standby`): each timed transaction starts once the standby thread
    // has made the next instances, as at a load it keeps up with; the
    // making itself (on the other core) is not in the time, so this is
    // latency, not CPU.
    let made_ahead = |c: &mut Criterion, name: &str, plugins: &str| {
        let h = host(plugins);
        let mut g = c.benchmark_group("made ahead");
        g.warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(500))
            .sample_size(10);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut waited_for = Duration::ZERO;
                for _ in 0..iters {
                    while !h.standby_ready() {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    let msg = MessageData::new(body.clone());
                    let started = Instant::now();
                    rt.block_on(transaction(&h, &conn, &env, &msg));
                    waited_for += started.elapsed();
                }
                waited_for
            })
        });
        g.finish();
        no_failures(&h);
    };
    // The example plugins' manifests say stateless, so as configured by
    // default their instances are warm; `reuse = 0` measures the fresh
    // instance per transaction that a plugin without that word gets.
    whole(
        c,
        "transaction, six plugins, fresh instances",
        &six("reuse = 0\n"),
    );
    whole(
        c,
        "transaction, six plugins, as configured (warm)",
        &six(""),
    );
    whole(
        c,
        "transaction, three plugins, fresh instances",
        &three("reuse = 0\n"),
    );
    whole(
        c,
        "transaction, three plugins, fresh, no pool",
        &format!(
            "[plugin_limits]\npool_instances = 0\n{}",
            three("reuse = 0\n")
        ),
    );
    whole(
        c,
        "transaction, three plugins, warm reuse",
        &three("reuse = 1000\n"),
    );
    // What one Python or JavaScript plugin adds to a transaction: compare
    // with the transaction through no plugin at all. Skipped if they are not
    // built (plugins/build-python.sh and build-js.sh; scripts/test builds
    // them).
    whole(c, "transaction, no plugins", "");
    let root = env!("CARGO_MANIFEST_DIR");
    for (label, name, file, hook) in [
        (
            "Python",
            "sender-block",
            "python/sender_block.wasm",
            "mail-from",
        ),
        (
            "JavaScript",
            "header-rewrite",
            "js/header_rewrite.wasm",
            "data",
        ),
    ] {
        let path = format!("{root}/plugins/target/{file}");
        if !std::path::Path::new(&path).exists() {
            eprintln!("skipping the {label} plugin: {path} is not built");
            continue;
        }
        let p = |rest: &str| {
            format!(
                "[[plugin]]\nname = \"{name}\"\npath = \"{path}\"\nhooks = [\"{hook}\"]\n{rest}"
            )
        };
        // Made in the transaction: what an instance costs in CPU.
        whole(
            c,
            &format!("transaction, one {label} plugin ({hook}), fresh instance"),
            &p("reuse = 0\nstandby = 0\n"),
        );
        made_ahead(
            c,
            &format!("transaction, one {label} plugin ({hook}), fresh instance made ahead"),
            &p("reuse = 0\nstandby = 2\n"),
        );
        whole(
            c,
            &format!("transaction, one {label} plugin ({hook}), warm reuse"),
            &p("reuse = 1000\n"),
        );
    }
}

/// connect, ehlo, mail-from, rcpt, data, deliver and the end of the
/// transaction, through every plugin of `host`; panics if a call failed.
async fn transaction(
    host: &Arc<PluginHost>,
    conn: &wit::Connection,
    env: &wit::Envelope,
    msg: &Arc<MessageData>,
) {
    let mut s = PluginSession::new(host.clone(), "bench".into());
    let tx = || TxView { conn, env };
    ok(s.connect(conn).await);
    ok(s.ehlo(conn, "client.test").await);
    ok(s.mail_from(conn, "a@example.test", &vec![]).await.0);
    ok(s.rcpt(tx(), &env.recipients[0]).await.0);
    ok(s.data(tx(), msg).await.0);
    let routes = s.deliver(tx()).await;
    assert_eq!(routes.len(), env.recipients.len());
    s.end_tx();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
