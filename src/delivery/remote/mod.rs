//! Delivery to other servers: the route each remote recipient takes
//! (a plugin's relay route, static routes, smarthost, MX) and the SMTP
//! client that carries the message there.
//!
//! The queue manager hands over every remote recipient of a message in one
//! call and gets one classified `Outcome` per recipient back. Recipients
//! with the same destination share one transaction; destinations are tried
//! at the same time, each over a kept connection when one is idle.
//!
//! | file | owns |
//! |---|---|
//! | `route.rs` | recipient → `Destination` (hosts, port, TLS policy, AUTH) |
//! | `client.rs` | one SMTP/LMTP conversation, generic over the stream |
//! | `tls.rs` | rustls client configs per TLS policy |
//! | `pool.rs` | kept connections and the connection limits |
//! | `classify.rs` | reply or error → `Outcome`, in one place |
//! | `message.rs` | what the stored message needs (loop count, 8BIT, SMTPUTF8) |
//! | `mta_sts.rs` | MTA-STS policies: lookup, HTTPS fetch, cache (RFC 8461) |
//! | `dane.rs` | TLSA lookups over DNSSEC and what records match (RFC 7672) |
//! | `tlsrpt.rs` | TLS results per policy domain and day, the report (RFC 8460) |
//!
//! For MX delivery the TLS of each host is chosen per host (`Hop`): DANE
//! when the host has validated, usable TLSA records; else the domain's
//! MTA-STS policy (`enforce`: only listed hosts, valid certificate;
//! `testing`: deliver, record failures); else `outbound.tls`.

pub mod classify;
pub mod client;
pub mod config;
pub mod dane;
pub mod message;
pub mod mta_sts;
pub mod pool;
pub mod route;
pub mod tls;
pub mod tlsrpt;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use tokio::net::{TcpStream, UnixStream};
use tracing::{debug, warn};

use self::client::{Client, ClientError, Envelope, Peer, RcptLine};
use self::config::{OutboundSettings, TlsPolicy};
use self::dane::{Dane, Tlsa};
use self::mta_sts::{Cached, Mode, MtaSts};
use self::pool::{Conn, Got, Pool};
use self::route::{Destination, Host, Router};
use self::tls::{ClientTls, PolicyTls, Seen};
use self::tlsrpt::{PolicyDesc, PolicyType, ResultType, SessionResult, TlsRpt};
use crate::delivery::Outcome;
use crate::queue::QueuedMessage;
use crate::smtp::request::{MailArgs, RcptArgs};

/// The outbound side: shared by every delivery attempt (router, client TLS
/// configs, kept connections, concurrency limits).
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OutboundSettings,
    router: Router,
    tls: ClientTls,
    pool: Arc<Pool>,
    policy_tls: Result<PolicyTls, String>,
    mta_sts: MtaSts,
    dane: Dane,
    rpt: TlsRpt,
}

/// How TLS is decided for one MX host.
enum Hop {
    /// The destination's own `tls` policy.
    Plain,
    /// The domain's MTA-STS policy lists this host (or is `testing`).
    Sts { policy: Arc<Cached>, domain: String },
    /// The host has validated, usable TLSA records.
    Dane {
        records: Arc<Vec<Tlsa>>,
        domain: String,
        host: String,
    },
}

impl Hop {
    /// True when STARTTLS must succeed.
    fn mandatory(&self) -> bool {
        match self {
            Hop::Plain => false,
            Hop::Sts { policy, .. } => policy.policy.mode == Mode::Enforce,
            Hop::Dane { .. } => true,
        }
    }

    /// The TLS-RPT policy for results of this hop, when there is a domain.
    fn desc(&self, dest: &Destination) -> Option<PolicyDesc> {
        match self {
            Hop::Plain => dest.policy_domain.as_ref().map(|d| PolicyDesc {
                kind: PolicyType::NoPolicyFound,
                strings: Vec::new(),
                domain: d.clone(),
                mx_host: Vec::new(),
            }),
            Hop::Sts { policy, domain } => Some(policy.desc(domain)),
            Hop::Dane {
                records,
                domain,
                host,
            } => Some(PolicyDesc {
                kind: PolicyType::Tlsa,
                strings: records.iter().map(|r| r.to_string()).collect(),
                domain: domain.clone(),
                mx_host: vec![host.clone()],
            }),
        }
    }

    /// The policy failure `e` stands for, as the queue and DSNs show it.
    fn explain(&self, e: ClientError, seen: &Seen) -> ClientError {
        let what = match self {
            Hop::Plain => return e,
            Hop::Sts { policy, .. } if policy.policy.mode != Mode::Enforce => return e,
            Hop::Sts { domain, .. } => format!("the MTA-STS policy of {domain} (mode enforce)"),
            Hop::Dane { host, .. } => format!("DANE (validated TLSA records of {host})"),
        };
        match e {
            ClientError::NoStartTls => ClientError::Policy {
                status: "4.7.0",
                text: format!("STARTTLS is required by {what} but not offered"),
            },
            ClientError::Tls(detail) => ClientError::Policy {
                status: "4.7.5",
                text: format!(
                    "certificate refused under {what}: {}",
                    seen.get().map_or(detail, |(_, why)| why)
                ),
            },
            e => e,
        }
    }
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

/// One message's recipients for one destination.
struct Batch {
    /// Indexes into the message's recipients.
    rcpts: Vec<usize>,
    /// The forward paths sent, one per entry of `rcpts`.
    addresses: Vec<String>,
}

/// How to reach a destination.
pub enum Endpoint<'a> {
    /// TCP to a routed destination.
    Tcp(&'a Destination),
    /// A Unix socket (local LMTP); the key names it in the pool.
    Unix {
        /// Pool key.
        key: String,
        /// Socket path.
        path: &'a Path,
    },
}

impl Endpoint<'_> {
    fn key(&self) -> &str {
        match self {
            Endpoint::Tcp(d) => &d.key,
            Endpoint::Unix { key, .. } => key,
        }
    }
}

impl Outbound {
    /// The outbound side for `settings`; MTA-STS policies are cached in
    /// `db` (the queue's store) when given.
    pub fn new(settings: &crate::config::Settings, db: Option<&sled::Db>) -> Outbound {
        let s = &settings.outbound;
        let policy_tls = PolicyTls::new(s.mta_sts.ca_file.as_deref()).map_err(|e| e.to_string());
        if let Err(e) = &policy_tls {
            warn!(error = %e, "outbound.mta_sts.ca_file unusable: MX hosts under a TLS policy will be deferred");
        }
        let https = match &policy_tls {
            Ok(p) => p.https(),
            Err(_) => ClientTls::new().any(),
        };
        let rpt_dir = s
            .tls_rpt
            .dir
            .clone()
            .unwrap_or_else(|| settings.data_dir.join("tls-rpt"));
        Outbound {
            inner: Arc::new(Inner {
                mta_sts: MtaSts::new(&s.mta_sts, https, db),
                dane: Dane::new(&s.dane, &settings.dns),
                rpt: TlsRpt::new(&s.tls_rpt, rpt_dir),
                policy_tls,
                router: Router::new(settings),
                tls: ClientTls::new(),
                pool: Arc::new(Pool::new(
                    s.max_connections,
                    s.max_connections_per_destination,
                    s.max_messages_per_connection,
                    s.idle_timeout,
                )),
                settings: s.clone(),
            }),
        }
    }

    /// Tries recipients `rcpts` of `msg` (all remote) once. `done` hears
    /// the outcomes of each destination as soon as its transaction ends, so
    /// the queue can record them before the slowest destination finishes:
    /// a crash then repeats at most the transactions still open.
    pub async fn deliver(
        &self,
        msg: &QueuedMessage,
        rcpts: &[usize],
        body: &sled::IVec,
        done: &mut (dyn FnMut(Vec<(usize, Outcome)>) + Send),
    ) {
        let max = self.inner.settings.max_received;
        let hops = message::received_count(body);
        if hops > max {
            let o = classify::mail_loop(hops, max);
            done(rcpts.iter().map(|&i| (i, o.clone())).collect());
            return;
        }
        let mut outcomes = Vec::new();
        let mut groups: HashMap<String, (Destination, Batch)> = HashMap::new();
        for &i in rcpts {
            let r = &msg.recipients[i];
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            match self.inner.router.route(&r.route, domain).await {
                Ok(dest) => {
                    let (_, batch) = groups.entry(dest.key.clone()).or_insert_with(|| {
                        let b = Batch {
                            rcpts: Vec::new(),
                            addresses: Vec::new(),
                        };
                        (dest, b)
                    });
                    batch.rcpts.push(i);
                    batch.addresses.push(r.address.clone());
                }
                Err(f) => outcomes.push((i, classify::route(f))),
            }
        }
        if !outcomes.is_empty() {
            done(outcomes);
        }
        // The stored body is shared (sled's IVec is reference counted), not
        // copied, by the destinations' tasks.
        let body = body.clone();
        let msg = Arc::new(msg.clone());
        let mut running = tokio::task::JoinSet::new();
        for (_, (dest, batch)) in groups {
            let (this, msg, body) = (self.clone(), msg.clone(), body.clone());
            running.spawn(async move {
                let out = this.send(&Endpoint::Tcp(&dest), &msg, &batch, &body).await;
                batch.rcpts.into_iter().zip(out).collect::<Vec<_>>()
            });
        }
        while let Some(finished) = running.join_next().await {
            match finished {
                Ok(v) => done(v),
                // A panic in one destination's task: its recipients keep
                // no outcome and stay pending for the next attempt.
                Err(e) => warn!(error = %e, "outbound delivery task failed"),
            }
        }
    }

    /// Local LMTP (`[local] delivery = "lmtp"`): each mailbox once, as
    /// `mailbox@domain`; recipients sharing a mailbox share its outcome.
    pub async fn deliver_lmtp(
        &self,
        target: &crate::delivery::lmtp::LmtpTarget,
        msg: &QueuedMessage,
        rcpts: &[usize],
        body: &[u8],
    ) -> Vec<(usize, Outcome)> {
        use crate::delivery::lmtp::LmtpTarget;
        let mut batch = Batch {
            rcpts: Vec::new(),
            addresses: Vec::new(),
        };
        let mut same: Vec<(usize, usize)> = Vec::new();
        for &i in rcpts {
            let address = crate::delivery::lmtp::rcpt_address(&msg.recipients[i]);
            match batch.addresses.iter().position(|a| *a == address) {
                Some(j) => same.push((i, j)),
                None => {
                    batch.rcpts.push(i);
                    batch.addresses.push(address);
                }
            }
        }
        let dest;
        let endpoint = match target {
            LmtpTarget::Tcp(addr) => {
                dest = Destination {
                    key: format!("lmtp:local:{addr}"),
                    hosts: vec![Host {
                        name: addr.ip().to_string(),
                        addrs: vec![addr.ip()],
                    }],
                    port: addr.port(),
                    tls: TlsPolicy::None,
                    ca_file: None,
                    auth: None,
                    lmtp: true,
                    policy_domain: None,
                };
                Endpoint::Tcp(&dest)
            }
            LmtpTarget::Unix(path) => Endpoint::Unix {
                key: format!("lmtp:unix:{}", path.display()),
                path,
            },
        };
        let out = self.send(&endpoint, msg, &batch, body).await;
        let mut outcomes: Vec<(usize, Outcome)> = batch
            .rcpts
            .iter()
            .copied()
            .zip(out.iter().cloned())
            .collect();
        outcomes.extend(same.into_iter().map(|(i, j)| (i, out[j].clone())));
        outcomes
    }

    /// One transaction for `batch` at `endpoint`; one outcome per recipient.
    async fn send(
        &self,
        endpoint: &Endpoint<'_>,
        msg: &QueuedMessage,
        batch: &Batch,
        body: &[u8],
    ) -> Vec<Outcome> {
        let n = batch.rcpts.len();
        let pool = &self.inner.pool;
        let key = endpoint.key();
        let mut leased = match pool.get(key).await {
            Got::Reused(l) => *l,
            Got::Room(permits) => match self.connect(endpoint).await {
                Ok(conn) => Pool::lease(conn, permits),
                Err(o) => return vec![o; n],
            },
        };
        let conn = &mut leased.conn;
        let peer = conn.peer().clone();
        let facts = Facts::of(msg, batch, body);
        let outcomes = match self.check(conn, &facts) {
            Some(refusal) => vec![refusal; n],
            None => {
                let env = envelope(conn, msg, batch, &facts);
                let fates = conn.send(&env, body).await;
                fates.iter().map(|f| classify::fate(&peer, f)).collect()
            }
        };
        pool.put(key, leased).await;
        outcomes
    }

    /// Refuses before sending what this server cannot take.
    fn check(&self, conn: &Conn, facts: &Facts) -> Option<Outcome> {
        let caps = conn.caps();
        let peer = conn.peer();
        if caps.too_big(facts.size) {
            return Some(classify::too_big(peer, facts.size, caps.size.unwrap_or(0)));
        }
        if facts.smtputf8 && !caps.smtputf8 {
            return Some(classify::needs_smtputf8(peer));
        }
        if facts.eight_bit && !caps.eight_bit_mime && !caps.smtputf8 {
            return Some(classify::needs_8bitmime(peer));
        }
        None
    }

    /// A new connection: hosts and their addresses in order until one
    /// works. A temporary failure anywhere makes the whole attempt
    /// temporary; otherwise the last permanent refusal stands.
    async fn connect(&self, endpoint: &Endpoint<'_>) -> Result<Conn, Outcome> {
        let dest = match endpoint {
            Endpoint::Unix { path, .. } => return self.connect_unix(path).await,
            Endpoint::Tcp(d) => d,
        };
        let sts = self.sts_policy(dest).await;
        let mut temporary = None;
        let mut permanent = None;
        for host in &dest.hosts {
            let hop = match self.hop(dest, host, sts.as_ref()).await {
                Ok(hop) => hop,
                Err(o) => {
                    temporary = Some(o);
                    continue;
                }
            };
            for &ip in &host.addrs {
                let peer = Peer {
                    name: host.name.clone(),
                    addr: Some(ip.to_string()),
                };
                let seen = Seen::default();
                let mut r = self
                    .establish(dest, host, ip, peer.clone(), &hop, &seen, true)
                    .await;
                // Opportunistic TLS must not make mail undeliverable: a
                // failed STARTTLS is retried once in plaintext (RFC 7435).
                let tls_failed = matches!(
                    &r,
                    Err(ClientError::Tls(_)
                        | ClientError::Refused {
                            stage: client::Stage::StartTls,
                            ..
                        })
                );
                let fallback = match &hop {
                    Hop::Plain => dest.tls == TlsPolicy::Opportunistic,
                    hop => !hop.mandatory(),
                };
                if tls_failed && fallback {
                    if let Err(e) = &r {
                        warn!(peer = %peer, error = %e, "STARTTLS failed; retrying without TLS");
                    }
                    self.report(dest, &hop, &peer, &r, &seen);
                    r = self
                        .establish(dest, host, ip, peer.clone(), &hop, &seen, false)
                        .await;
                } else {
                    self.report(dest, &hop, &peer, &r, &seen);
                }
                match r.map_err(|e| hop.explain(e, &seen)) {
                    Ok(conn) => return Ok(conn),
                    Err(e) => {
                        debug!(peer = %peer, error = %e, "connection failed");
                        match classify::error(Some(&peer), &e) {
                            o @ Outcome::Permanent(_) => permanent = Some(o),
                            o => temporary = Some(o),
                        }
                    }
                }
            }
        }
        Err(temporary.or(permanent).unwrap_or_else(|| {
            Outcome::temporary("4.4.3", format!("{}: no address to connect to", dest.key))
        }))
    }

    /// The MTA-STS policy in force for an MX destination, if any.
    async fn sts_policy(&self, dest: &Destination) -> Option<Arc<Cached>> {
        let domain = dest.policy_domain.as_deref()?;
        let inner = &self.inner;
        if !inner.mta_sts.enabled() {
            return None;
        }
        let dns = inner.router.resolver()?;
        inner.mta_sts.policy(dns, domain, &inner.rpt).await
    }

    /// How TLS is decided for `host`: DANE first (RFC 7672 §2.2: it takes
    /// precedence over MTA-STS), then the MTA-STS policy, then the
    /// destination's `tls`. An `Err` rules the host out for this attempt.
    async fn hop(
        &self,
        dest: &Destination,
        host: &Host,
        sts: Option<&Arc<Cached>>,
    ) -> Result<Hop, Outcome> {
        let Some(domain) = &dest.policy_domain else {
            return Ok(Hop::Plain);
        };
        let inner = &self.inner;
        match inner.dane.lookup(&host.name, dest.port).await {
            dane::Answer::Usable(records) => {
                return Ok(Hop::Dane {
                    records,
                    domain: domain.clone(),
                    host: host.name.clone(),
                });
            }
            dane::Answer::Failed(why) => {
                let desc = PolicyDesc {
                    kind: PolicyType::Tlsa,
                    strings: Vec::new(),
                    domain: domain.clone(),
                    mx_host: vec![host.name.clone()],
                };
                inner.rpt.record(
                    &desc,
                    SessionResult::Failure {
                        result: ResultType::DnssecInvalid,
                        mx: Some(host.name.clone()),
                        ip: None,
                        info: why.clone(),
                    },
                );
                return Err(classify::policy_refused(&host.name, "4.7.5", why));
            }
            dane::Answer::None => {}
        }
        let Some(policy) = sts else {
            return Ok(Hop::Plain);
        };
        if !policy.policy.matches(&host.name) {
            let why = format!(
                "MX host not listed in the MTA-STS policy of {domain} (mode {}, mx: {})",
                policy.policy.mode.as_str(),
                policy.policy.mx.join(", ")
            );
            inner.rpt.record(
                &policy.desc(domain),
                SessionResult::Failure {
                    result: ResultType::ValidationFailure,
                    mx: Some(host.name.clone()),
                    ip: None,
                    info: why.clone(),
                },
            );
            if policy.policy.mode == Mode::Enforce {
                return Err(classify::policy_refused(&host.name, "4.7.0", why));
            }
        }
        Ok(Hop::Sts {
            policy: policy.clone(),
            domain: domain.clone(),
        })
    }

    /// Records one attempt's TLS result for TLS-RPT (connection failures
    /// before STARTTLS are not TLS results and are not counted).
    fn report(
        &self,
        dest: &Destination,
        hop: &Hop,
        peer: &Peer,
        r: &Result<Conn, ClientError>,
        seen: &Seen,
    ) {
        let Some(desc) = hop.desc(dest) else { return };
        if matches!(hop, Hop::Plain) && dest.tls == TlsPolicy::None {
            return;
        }
        let failure = |result: ResultType, info: String| SessionResult::Failure {
            result,
            mx: Some(peer.name.clone()),
            ip: peer.addr.clone(),
            info,
        };
        let result = match r {
            Ok(Conn::Tls(_)) => match seen.get() {
                Some((kind, why)) => failure(kind, why),
                None => SessionResult::Success,
            },
            Ok(_) | Err(ClientError::NoStartTls) => failure(
                ResultType::StarttlsNotSupported,
                "STARTTLS not offered".into(),
            ),
            Err(ClientError::Tls(e)) => match seen.get() {
                Some((kind, why)) => failure(kind, why),
                None => failure(ResultType::ValidationFailure, e.clone()),
            },
            Err(ClientError::Refused {
                stage: client::Stage::StartTls,
                reply,
            }) => failure(ResultType::StarttlsNotSupported, reply.one_line()),
            Err(_) => return,
        };
        self.inner.rpt.record(&desc, result);
    }

    /// Connect, greeting, EHLO, STARTTLS by policy, AUTH.
    #[allow(clippy::too_many_arguments)]
    async fn establish(
        &self,
        dest: &Destination,
        host: &Host,
        ip: IpAddr,
        peer: Peer,
        hop: &Hop,
        seen: &Seen,
        tls_allowed: bool,
    ) -> Result<Conn, ClientError> {
        let s = &self.inner.settings;
        let t = &s.timeouts;
        let addr = SocketAddr::new(ip, dest.port);
        let tcp = match tokio::time::timeout(t.connect, TcpStream::connect(addr)).await {
            Err(_) => return Err(ClientError::Timeout(client::Stage::Connect)),
            Ok(Err(e)) => return Err(ClientError::Connect(e.to_string())),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let c = Client::open(tcp, peer, t, dest.lmtp, &s.helo_name).await?;
        let policy = match hop {
            Hop::Plain => dest.tls,
            hop if hop.mandatory() => TlsPolicy::Require,
            _ => TlsPolicy::Opportunistic,
        };
        let starttls = match policy {
            TlsPolicy::None => false,
            TlsPolicy::Opportunistic => tls_allowed && c.caps().starttls,
            TlsPolicy::Require | TlsPolicy::Verify if !c.caps().starttls => {
                c.quit().await;
                return Err(ClientError::NoStartTls);
            }
            TlsPolicy::Require | TlsPolicy::Verify => true,
        };
        if !starttls {
            // Config refuses AUTH without `require` or `verify`, so
            // credentials never reach this point.
            return Ok(Conn::Plain(c));
        }
        let policy_tls = || {
            self.inner
                .policy_tls
                .as_ref()
                .map_err(|e| ClientError::Tls(e.clone()))
        };
        let connector = match hop {
            Hop::Sts { policy, .. } => policy_tls()?
                .sts(policy.policy.mode == Mode::Enforce, seen)
                .map_err(|e| ClientError::Tls(e.to_string()))?,
            Hop::Dane { records, .. } => policy_tls()?.dane(records.clone(), seen),
            Hop::Plain => match dest.tls {
                TlsPolicy::Verify => self
                    .inner
                    .tls
                    .verifying(dest.ca_file.as_deref())
                    .map_err(|e| ClientError::Tls(e.to_string()))?,
                _ => self.inner.tls.any(),
            },
        };
        let mut c = c
            .starttls(&connector, tls::server_name(&host.name, ip))
            .await?;
        if let Some(creds) = &dest.auth {
            c.auth(creds).await?;
        }
        Ok(Conn::Tls(Box::new(c)))
    }

    async fn connect_unix(&self, path: &Path) -> Result<Conn, Outcome> {
        let s = &self.inner.settings;
        let peer = Peer {
            name: path.display().to_string(),
            addr: None,
        };
        let sock = match tokio::time::timeout(s.timeouts.connect, UnixStream::connect(path)).await {
            Err(_) => Err(ClientError::Timeout(client::Stage::Connect)),
            Ok(Err(e)) => Err(ClientError::Connect(e.to_string())),
            Ok(Ok(sock)) => Ok(sock),
        };
        let c = match sock {
            Ok(sock) => Client::open(sock, peer.clone(), &s.timeouts, true, &s.helo_name).await,
            Err(e) => Err(e),
        };
        c.map(Conn::Unix)
            .map_err(|e| classify::error(Some(&peer), &e))
    }
}

/// What a transaction needs from the server, found once per transaction
/// (the 8-bit scan reads the whole body).
struct Facts {
    size: u64,
    eight_bit: bool,
    /// A non-ASCII address in the envelope, or a message that came in with
    /// SMTPUTF8.
    smtputf8: bool,
}

impl Facts {
    fn of(msg: &QueuedMessage, batch: &Batch, body: &[u8]) -> Facts {
        Facts {
            size: body.len() as u64,
            eight_bit: message::has_8bit(body),
            smtputf8: !msg.return_path().is_ascii()
                || batch.addresses.iter().any(|a| !a.is_ascii())
                || message::received_with_smtputf8(body),
        }
    }
}

/// The envelope for this server: parameters only for extensions it offers.
fn envelope<'a>(conn: &Conn, msg: &'a QueuedMessage, batch: &Batch, facts: &Facts) -> Envelope<'a> {
    let caps = conn.caps();
    let mail = MailArgs {
        size: caps.size.map(|_| facts.size),
        eight_bit: caps.eight_bit_mime && facts.eight_bit,
        smtputf8: caps.smtputf8 && facts.smtputf8,
        ret: msg.ret.filter(|_| caps.dsn),
        envid: msg.envid.as_deref().filter(|_| caps.dsn),
    };
    let rcpts = batch
        .rcpts
        .iter()
        .zip(&batch.addresses)
        .map(|(&i, address)| {
            let r = &msg.recipients[i];
            RcptLine {
                address: address.clone(),
                args: RcptArgs {
                    notify: r.notify.filter(|_| caps.dsn),
                    orcpt: r.orcpt.as_deref().filter(|_| caps.dsn),
                },
            }
        })
        .collect();
    Envelope {
        sender: msg.return_path(),
        mail,
        rcpts,
    }
}
