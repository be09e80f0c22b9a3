//! Per-call latency of the plugins' kv store, backend by backend: sled (the
//! node's own store) and Redis on loopback (Debian's redis-server, started
//! here on a free port; skipped with a note when it is not installed). The
//! calls go through the same `KvBackend` the host's `kv` capability uses,
//! from a tokio runtime, so this is what a plugin's `kv::incr` costs on top
//! of the ~1 µs of a call into a live instance.
//!
//! `cargo bench --bench kv`

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use wasmtp::config::PluginLimits;
use wasmtp::plugin::kv::{KvBackend, KvBackendName, KvSettings, RedisKv, SledKv};

/// A redis-server on a free loopback port, killed on drop.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--logfile", ""])
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let out = BufReader::new(child.stdout.take()?);
        for line in out.lines() {
            if line.ok()?.contains("Ready to accept connections") {
                return Some(Redis(child, port));
            }
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn calls(c: &mut Criterion, name: &str, kv: Arc<dyn KvBackend>, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group(format!("kv-{name}"));
    g.bench_function("get", |b| {
        b.iter(|| rt.block_on(kv.get("bench", "k")).expect("get"))
    });
    g.bench_function("set-ttl", |b| {
        b.iter(|| {
            rt.block_on(kv.set("bench", "k", b"value".to_vec(), Some(60)))
                .expect("set")
        })
    });
    g.bench_function("incr-ttl", |b| {
        b.iter(|| {
            rt.block_on(kv.incr("bench", "n", 1, Some(60)))
                .expect("incr")
        })
    });
    g.finish();
}

fn kv(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = sled::Config::new().temporary(true).open().expect("sled");
    let limits = PluginLimits::default();
    calls(
        c,
        "sled",
        Arc::new(SledKv::new(db, limits.max_kv_size)),
        &rt,
    );
    let Some(redis) = Redis::start() else {
        eprintln!("redis-server not installed: the Redis backend is not measured");
        return;
    };
    let settings = KvSettings {
        backend: KvBackendName::Redis,
        url: Some(format!("redis://127.0.0.1:{}/0", redis.1)),
        timeout: Duration::from_secs(1),
        ..KvSettings::default()
    };
    let kv = rt.block_on(async { Arc::new(RedisKv::new(&settings)) });
    calls(c, "redis", kv, &rt);
}

criterion_group!(benches, kv);
criterion_main!(benches);
