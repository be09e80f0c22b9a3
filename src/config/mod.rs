//! Configuration in two layers: raw serde structs that mirror the TOML file
//! (unknown keys refused), and resolved `Settings` that the server runs on.
//!
//! Values are checked while they are deserialized (sizes, durations, domain
//! names, addresses), so every error carries the file, line, column and the
//! dotted key of the offending value. The embedded default config is a real
//! TOML file (`config/default.toml`) parsed by the same code.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod value;

pub use value::{AtLeast, Between, ByteSize, Domain, Dur, LineEndings};

/// The config used when `--config` is not given.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");
/// Name shown in errors for the embedded default.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

/// A config error that names where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded default config>`).
    pub file: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// Dotted key such as `limits.max_message_size`, when known.
    pub key: Option<String>,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------- raw layer

/// The TOML file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`
    #[serde(default)]
    pub server: RawServer,
    /// `[[listener]]`
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    /// `[limits]`
    #[serde(default)]
    pub limits: RawLimits,
    /// `[timeouts]`
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// `[queue]`
    #[serde(default)]
    pub queue: RawQueue,
    /// `[local]`
    #[serde(default)]
    pub local: RawLocal,
    /// `[log]`
    #[serde(default)]
    pub log: RawLog,
    /// `[tls]`
    #[serde(default)]
    pub tls: crate::tls::RawTls,
    /// `[auth]`
    #[serde(default)]
    pub auth: crate::auth::RawAuth,
    /// `[relay]`
    #[serde(default)]
    pub relay: crate::auth::RawRelay,
    /// `[outbound]`
    #[serde(default)]
    pub outbound: crate::delivery::remote::config::RawOutbound,
    /// `[[plugin]]`, in the order they run.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<RawPlugin>,
    /// `[dns]`
    #[serde(default)]
    pub dns: RawDns,
    /// `[plugin_limits]`
    #[serde(default)]
    pub plugin_limits: RawPluginLimits,
    /// `[plugin_trust]`
    #[serde(default)]
    pub plugin_trust: crate::plugin::sign::RawPluginTrust,
    /// `[admin]`
    #[serde(default)]
    pub admin: crate::admin::RawAdmin,
    /// `[authentication]`
    #[serde(default)]
    pub authentication: crate::mailauth::RawAuthentication,
    /// `[dkim]`
    #[serde(default)]
    pub dkim: crate::mailauth::sign::RawDkim,
    /// `[arc]`
    #[serde(default)]
    pub arc: crate::mailauth::arc::RawArc,
    /// `[kv]`
    #[serde(default)]
    pub kv: crate::plugin::kv::RawKv,
}

/// `[[plugin]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    /// Name in logs, metrics and kv namespaces.
    pub name: String,
    /// The `.wasm` component (or `oci`).
    pub path: Option<PathBuf>,
    /// An OCI reference to pull the component from (or `path`); needs `sha256`.
    pub oci: Option<String>,
    /// Expected sha256 of the file (hex).
    pub sha256: Option<String>,
    /// Hooks this plugin runs on; default: all.
    pub hooks: Option<Vec<HookName>>,
    /// Capabilities granted: kv, dns, clock (log and notes always).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// What a trap, timeout or out-of-memory turns into.
    pub on_error: Option<OnError>,
    /// Deadline of one call.
    pub timeout: Option<Dur>,
    /// Per-hook deadlines, overriding `timeout`.
    #[serde(default)]
    pub timeouts: std::collections::BTreeMap<HookName, Dur>,
    /// Linear memory cap per instance.
    pub memory: Option<ByteSize>,
    /// Transactions one warm instance serves before it is dropped; 0: a
    /// fresh instance per transaction. Default: 0, or
    /// `plugin_limits.stateless_reuse` if the manifest says the plugin is
    /// stateless.
    pub reuse: Option<u32>,
    /// Fresh instances made ahead, off the SMTP path, so a transaction does
    /// not wait for one. Default: `plugin_limits.standby` for a plugin served
    /// fresh whose instance is slow to make (measured at load), else 0.
    pub standby: Option<Between<0, 64>>,
    /// Run `init` once at load and start instances from the state it left
    /// (default true); false: every fresh instance runs `init` itself.
    pub snapshot: Option<bool>,
    /// The plugin's own settings, handed to its `init` as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// The `http` grant: outgoing HTTP to the listed hosts (`plugin::http`).
    pub http: Option<crate::plugin::http::RawHttpGrant>,
}

/// `[dns]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Resolvers as `ip:port`; default: /etc/resolv.conf.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Per-query timeout.
    pub timeout: Option<Dur>,
}

/// `[plugin_limits]`: bounds on the host-side buffers plugins can grow.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPluginLimits {
    /// Notes per session (session and transaction notes together).
    pub max_notes: Option<AtLeast<1>>,
    /// Total bytes of note keys and values per session.
    pub max_notes_size: Option<ByteSize>,
    /// Largest kv key.
    pub max_kv_key: Option<ByteSize>,
    /// Largest kv value.
    pub max_kv_value: Option<ByteSize>,
    /// kv bytes (keys and values) per plugin namespace.
    pub max_kv_size: Option<ByteSize>,
    /// How often expired kv entries are swept out.
    pub kv_sweep_interval: Option<Dur>,
    /// Log lines per plugin per second; the excess is dropped and counted.
    pub log_lines_per_second: Option<AtLeast<1>>,
    /// Modifications one call may return.
    pub max_modifications: Option<AtLeast<1>>,
    /// Plugin instances the pooling allocator holds; 0 turns pooling off.
    /// Default: `limits.max_connections` x the number of plugins, at most 10,000.
    pub pool_instances: Option<usize>,
    /// Address space reserved per linear memory (pooled or not).
    pub memory_reservation: Option<ByteSize>,
    /// How long compiling one component (in the compiler child) may take.
    pub compile_timeout: Option<Dur>,
    /// Transactions one warm instance of a plugin whose manifest says it is
    /// stateless serves (its config's `reuse` wins); 0: such plugins get a
    /// fresh instance per transaction like the others.
    pub stateless_reuse: Option<u32>,
    /// Fresh instances made ahead for each plugin served fresh whose
    /// instance takes long to make (a plugin's `standby` wins).
    pub standby: Option<Between<0, 64>>,
}

/// A hook point, named as in the WIT contract.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum HookName {
    /// After accept, before the greeting.
    Connect,
    /// EHLO/HELO.
    Ehlo,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    Rcpt,
    /// End of DATA/BDAT.
    Data,
    /// Route choice per recipient before queueing.
    Deliver,
    /// A recipient was delivered.
    Delivered,
    /// A delivery attempt failed temporarily.
    Deferred,
    /// A recipient failed for good.
    Bounced,
}

impl HookName {
    /// Every hook, in session order.
    pub const ALL: [HookName; 9] = [
        HookName::Connect,
        HookName::Ehlo,
        HookName::MailFrom,
        HookName::Rcpt,
        HookName::Data,
        HookName::Deliver,
        HookName::Delivered,
        HookName::Deferred,
        HookName::Bounced,
    ];

    /// The WIT/config/log name.
    pub fn as_str(self) -> &'static str {
        match self {
            HookName::Connect => "connect",
            HookName::Ehlo => "ehlo",
            HookName::MailFrom => "mail-from",
            HookName::Rcpt => "rcpt",
            HookName::Data => "data",
            HookName::Deliver => "deliver",
            HookName::Delivered => "delivered",
            HookName::Deferred => "deferred",
            HookName::Bounced => "bounced",
        }
    }
}

/// A capability a plugin may be granted.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// Key-value store in the plugin's own namespace.
    Kv,
    /// DNS lookups.
    Dns,
    /// Wall clock.
    Clock,
    /// Outgoing HTTP to the hosts of the plugin's `http` table.
    Http,
}

impl Grant {
    /// Every grant.
    pub const ALL: [Grant; 4] = [Grant::Kv, Grant::Dns, Grant::Clock, Grant::Http];

    /// The config/manifest name.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Kv => "kv",
            Grant::Dns => "dns",
            Grant::Clock => "clock",
            Grant::Http => "http",
        }
    }
}

/// What a failing plugin call (trap, timeout, out of memory) turns into.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// 451 4.3.0: the client retries later.
    #[default]
    Tempfail,
    /// Ignore the plugin for this call.
    Continue,
    /// 550 5.7.0.
    Reject,
}

/// One configured plugin, resolved.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Name.
    pub name: String,
    /// Component file.
    pub path: PathBuf,
    /// Expected sha256 (lower-case hex).
    pub sha256: Option<String>,
    /// Hooks it runs on.
    pub hooks: Vec<HookName>,
    /// True if the config listed `hooks`; otherwise the plugin's manifest may narrow them.
    pub hooks_configured: bool,
    /// Granted capabilities.
    pub grants: Vec<Grant>,
    /// Failure policy.
    pub on_error: OnError,
    /// Deadline per hook.
    pub timeouts: std::collections::BTreeMap<HookName, Duration>,
    /// Memory cap in bytes.
    pub memory: u64,
    /// Config handed to `init`, as JSON.
    pub config_json: String,
    /// Transactions one warm instance serves before it is dropped (0: a
    /// fresh instance per transaction).
    pub reuse: u32,
    /// True if the config set `reuse` (a stateless manifest then changes
    /// nothing).
    pub reuse_configured: bool,
    /// Fresh instances made ahead, as configured; None: decided at load
    /// (`plugin_limits.standby` if the plugin is served fresh and slow to
    /// make, else 0).
    pub standby: Option<u32>,
    /// Start fresh instances from a snapshot taken after `init` at load
    /// (`plugin::snapshot`) rather than running `init` in each.
    pub snapshot: bool,
    /// The OCI reference `path` is pulled from, if any.
    pub oci: Option<String>,
    /// Whose signatures count (`[plugin_trust]`).
    pub trust: std::sync::Arc<crate::plugin::sign::TrustPolicy>,
    /// The `http` grant (also in `grants` as `Grant::Http`).
    pub http: Option<std::sync::Arc<crate::plugin::http::HttpGrant>>,
}

impl PluginSpec {
    /// The deadline of one call of `hook`.
    pub fn timeout(&self, hook: HookName) -> Duration {
        self.timeouts
            .get(&hook)
            .copied()
            .unwrap_or(Duration::from_millis(500))
    }
}

/// Bounds on what plugins can make the host keep (`[plugin_limits]`).
/// Every bound reports through `observe::limit_hit` with its key.
#[derive(Debug, Clone)]
pub struct PluginLimits {
    /// Notes per session.
    pub max_notes: usize,
    /// Bytes of note keys and values per session.
    pub max_notes_size: u64,
    /// Largest kv key in bytes.
    pub max_kv_key: u64,
    /// Largest kv value in bytes.
    pub max_kv_value: u64,
    /// kv bytes per plugin namespace.
    pub max_kv_size: u64,
    /// Period of the expired-entry sweep.
    pub kv_sweep_interval: Duration,
    /// Log lines per plugin per second.
    pub log_lines_per_second: u32,
    /// Modifications per call.
    pub max_modifications: usize,
    /// Instances the pooling allocator holds (0: no pool).
    pub pool_instances: usize,
    /// Address space reserved per linear memory, in bytes.
    pub memory_reservation: u64,
    /// Deadline of one compile in the compiler child.
    pub compile_timeout: Duration,
    /// `reuse` of a plugin whose manifest declares it stateless and whose
    /// config sets none.
    pub stateless_reuse: u32,
    /// Fresh instances made ahead for a plugin served fresh whose instance
    /// is slow to make, unless its config sets `standby`.
    pub standby: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            max_notes: 256,
            max_notes_size: 256 * 1024,
            max_kv_key: 1024,
            max_kv_value: 64 * 1024,
            max_kv_size: 64 * 1024 * 1024,
            kv_sweep_interval: Duration::from_secs(600),
            log_lines_per_second: 100,
            max_modifications: 100,
            pool_instances: 1000,
            memory_reservation: 4 << 30,
            compile_timeout: Duration::from_secs(300),
            stateless_reuse: 1000,
            standby: 2,
        }
    }
}

/// `[dns]` resolved: used by the plugins' dns capability and outbound routing.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Explicit resolvers, or None for the system's.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Per-query timeout.
    pub timeout: Duration,
}

/// `[server]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Name in the greeting, EHLO reply and Received headers.
    pub hostname: Option<Domain>,
    /// Base directory for the queue and mail.
    pub data_dir: Option<PathBuf>,
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Name used in logs.
    pub name: Option<String>,
    /// `ip:port` to listen on.
    pub address: SocketAddr,
    /// mx | submission | submissions (default mx).
    pub role: Option<Role>,
}

/// What a listener is for.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Port 25: mail from other servers; STARTTLS offered, AUTH optional.
    #[default]
    Mx,
    /// Port 587 (RFC 6409): STARTTLS, then AUTH before MAIL.
    Submission,
    /// Port 465 (RFC 8314): implicit TLS, AUTH before MAIL.
    Submissions,
}

impl Role {
    /// The name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mx => "mx",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }
}

/// `[limits]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest accepted message.
    pub max_message_size: Option<ByteSize>,
    /// Message bytes held in memory by all sessions together.
    pub max_bytes_in_flight: Option<ByteSize>,
    /// NOOP/RSET/VRFY/HELP/EHLO/HELO outside a transaction per session.
    pub max_junk_commands: Option<AtLeast<1>>,
    /// Recipients per message.
    pub max_recipients: Option<AtLeast<100>>,
    /// Open connections in total.
    pub max_connections: Option<AtLeast<1>>,
    /// Open connections per client IP.
    pub max_connections_per_ip: Option<AtLeast<1>>,
    /// IPv6 clients are counted per network of this prefix length.
    pub ipv6_prefix: Option<Between<32, 128>>,
    /// Errors per session before it is closed.
    pub max_errors: Option<AtLeast<1>>,
    /// Command line length including CRLF.
    pub command_line_length: Option<AtLeast<512>>,
    /// Text line length including CRLF.
    pub text_line_length: Option<AtLeast<1000>>,
}

/// `[timeouts]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Waiting for the next command.
    pub command: Option<Dur>,
    /// Waiting for the next chunk of message data.
    pub data: Option<Dur>,
    /// Writing replies to a client that does not read them.
    pub write: Option<Dur>,
    /// A whole connection, STARTTLS included.
    pub session: Option<Dur>,
    /// The TLS handshake (implicit TLS and STARTTLS).
    pub tls_handshake: Option<Dur>,
    /// How long shutdown waits for sessions to finish their command.
    pub shutdown: Option<Dur>,
}

/// `[queue]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// Queue store directory.
    pub dir: Option<PathBuf>,
    /// Share one flush between concurrent sessions.
    pub group_commit: Option<bool>,
    /// Memory the store may use to cache its pages.
    pub cache_size: Option<ByteSize>,
    /// Concurrent deliveries.
    pub delivery_workers: Option<AtLeast<1>>,
    /// Delay before each retry of a temporary failure; the last repeats.
    pub retry_intervals: Option<Vec<Dur>>,
    /// How long a message may stay queued before it bounces.
    pub max_age: Option<Dur>,
    /// How long a message waits before its sender gets a delay DSN; `0s` never.
    pub delay_warning: Option<Dur>,
}

/// `[local]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    /// Domains delivered locally.
    pub domains: Option<Vec<Domain>>,
    /// Known local parts.
    pub users: Option<Vec<String>>,
    /// Accept every local part.
    pub catch_all: Option<bool>,
    /// Maildir root.
    pub mail_dir: Option<PathBuf>,
    /// Separator for address extensions (`user+tag`).
    pub recipient_delimiter: Option<String>,
    /// Mailbox that receives postmaster mail.
    pub postmaster: Option<String>,
    /// Line endings written into Maildir files.
    pub line_endings: Option<LineEndings>,
    /// `maildir` (default) or `lmtp`.
    pub delivery: Option<LocalDelivery>,
    /// The LMTP server for `delivery = "lmtp"`: `127.0.0.1:24` or
    /// `unix:/path/to/socket`.
    pub lmtp: Option<String>,
}

/// How local recipients are delivered.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LocalDelivery {
    /// Write Maildir files under `mail_dir`.
    #[default]
    Maildir,
    /// Hand over to an LMTP server (`lmtp`).
    Lmtp,
}

/// `[log]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// human | json
    pub format: Option<LogFormat>,
    /// A tracing filter such as `info` or `wasmtp=debug`.
    pub level: Option<String>,
}

/// Log output format.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

// ----------------------------------------------------------- resolved layer

/// One listening socket.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Name used in logs.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// What the listener is for.
    pub role: Role,
}

/// SMTP protocol limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted message in octets.
    pub max_message_size: u64,
    /// Message bytes held in memory by all sessions together.
    pub max_bytes_in_flight: u64,
    /// Junk commands (NOOP, RSET, VRFY, HELP, EHLO, HELO with no
    /// transaction open) before the session is closed.
    pub max_junk_commands: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections per client IP.
    pub max_connections_per_ip: usize,
    /// Prefix length under which IPv6 clients count as one client, for the
    /// per-IP connection limit and the AUTH failure brake.
    pub ipv6_prefix: u8,
    /// Errors before the session is closed.
    pub max_errors: usize,
    /// Command line length including CRLF.
    pub command_line_length: usize,
    /// Text line length including CRLF.
    pub text_line_length: usize,
}

/// Session timeouts (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Waiting for a command.
    pub command: Duration,
    /// Waiting for message data.
    pub data: Duration,
    /// Writing replies.
    pub write: Duration,
    /// A whole connection's lifetime.
    pub session: Duration,
    /// The TLS handshake.
    pub tls_handshake: Duration,
    /// Grace period for sessions at shutdown.
    pub shutdown: Duration,
}

/// Queue settings.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Store directory.
    pub dir: PathBuf,
    /// Share flushes between sessions.
    pub group_commit: bool,
    /// Page cache of the store, in bytes.
    pub cache_size: u64,
    /// Concurrent deliveries.
    pub delivery_workers: usize,
    /// Retry delays; the last repeats.
    pub retry_intervals: Vec<Duration>,
    /// Maximum time in the queue.
    pub max_age: Duration,
    /// When a delay DSN is sent (RFC 3464 `Action: delayed`); None: never.
    pub delay_warning: Option<Duration>,
}

/// Local delivery settings.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Local domains (lower case).
    pub domains: Vec<String>,
    /// Known users (lower case).
    pub users: Vec<String>,
    /// Accept every local part.
    pub catch_all: bool,
    /// Maildir root.
    pub mail_dir: PathBuf,
    /// Extension separator, if any.
    pub recipient_delimiter: Option<char>,
    /// Mailbox for postmaster.
    pub postmaster: String,
    /// Line endings written to Maildir.
    pub line_endings: LineEndings,
    /// The LMTP server that takes local mail instead of Maildir.
    pub lmtp: Option<crate::delivery::lmtp::LmtpTarget>,
}

/// Everything the server runs on, resolved once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where this came from (file path or the embedded name).
    pub source: String,
    /// Greeting / Received host name.
    pub hostname: String,
    /// Base data directory.
    pub data_dir: PathBuf,
    /// Listening sockets.
    pub listeners: Vec<Listener>,
    /// Protocol limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Queue.
    pub queue: QueueSettings,
    /// Local delivery.
    pub local: LocalSettings,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Plugins in the order they run.
    pub plugins: Vec<PluginSpec>,
    /// DNS for plugins and outbound routing.
    pub dns: DnsSettings,
    /// Bounds on host-side plugin buffers.
    pub plugin_limits: PluginLimits,
    /// Certificates.
    pub tls: crate::tls::TlsSettings,
    /// SMTP AUTH.
    pub auth: crate::auth::AuthSettings,
    /// Who may relay.
    pub relay: crate::auth::RelaySettings,
    /// Outbound delivery.
    pub outbound: crate::delivery::remote::config::OutboundSettings,
    /// The admin endpoint.
    pub admin: crate::admin::AdminSettings,
    /// Inbound verification (`[authentication]`).
    pub authentication: crate::mailauth::AuthSettings,
    /// DKIM signing keys (`[[dkim.sign]]`) and the ARC sealer (`[arc]`).
    pub dkim: crate::mailauth::sign::Signer,
    /// Where the plugins' kv namespaces live.
    pub kv: crate::plugin::kv::KvSettings,
}

impl Settings {
    /// Reads and resolves a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let name = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            position: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Settings::parse(&src, &name)
    }

    /// The embedded default config.
    pub fn embedded_default() -> Result<Settings, ConfigError> {
        Settings::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
    }

    /// Parses and resolves config text; `name` is used in errors.
    pub fn parse(src: &str, name: &str) -> Result<Settings, ConfigError> {
        let raw = parse_raw(src, name)?;
        resolve(raw, src, name)
    }
}

/// Parses the raw layer, turning serde errors into located errors.
pub fn parse_raw(src: &str, name: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(src).map_err(|e| toml_error(&e, src, name, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = (path != "." && !path.is_empty()).then_some(path);
        toml_error(e.inner(), src, name, key)
    })
}

fn toml_error(e: &toml::de::Error, src: &str, name: &str, key: Option<String>) -> ConfigError {
    ConfigError {
        file: name.to_string(),
        position: e.span().map(|s| line_col(src, s.start)),
        key,
        message: e.message().trim().to_string(),
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// Finds the line of `key = ` for errors detected after parsing.
fn locate(src: &str, key: &str) -> Option<(usize, usize)> {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    src.lines().enumerate().find_map(|(i, l)| {
        let t = l.trim_start();
        let rest = t.strip_prefix(leaf)?;
        rest.trim_start()
            .starts_with('=')
            .then(|| (i + 1, l.len() - t.len() + 1))
    })
}

fn resolve(raw: RawConfig, src: &str, name: &str) -> Result<Settings, ConfigError> {
    let err = |key: &str, message: String| ConfigError {
        file: name.to_string(),
        position: locate(src, key),
        key: Some(key.to_string()),
        message,
    };
    let data_dir = raw
        .server
        .data_dir
        .unwrap_or_else(|| PathBuf::from("wasmtp-data"));
    let hostname = match raw.server.hostname {
        Some(d) => d.0,
        None => gethostname::gethostname().to_string_lossy().to_lowercase(),
    };

    if raw.listeners.is_empty() {
        return Err(err(
            "listener",
            "at least one [[listener]] with an address is required".into(),
        ));
    }
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        if listeners
            .iter()
            .any(|o: &Listener| o.address == l.address && l.address.port() != 0)
        {
            return Err(err(
                "address",
                format!("listener address {} is used twice", l.address),
            ));
        }
        listeners.push(Listener {
            name: l.name.unwrap_or_else(|| format!("smtp{i}")),
            address: l.address,
            role: l.role.unwrap_or_default(),
        });
    }

    let l = raw.limits;
    let limits = Limits {
        max_message_size: l.max_message_size.map_or(25 * 1024 * 1024, |b| b.0),
        max_bytes_in_flight: l.max_bytes_in_flight.map_or(512 * 1024 * 1024, |b| b.0),
        max_junk_commands: l.max_junk_commands.map_or(100, |n| n.0),
        max_recipients: l.max_recipients.map_or(1000, |n| n.0),
        max_connections: l.max_connections.map_or(1000, |n| n.0),
        max_connections_per_ip: l.max_connections_per_ip.map_or(50, |n| n.0),
        ipv6_prefix: l.ipv6_prefix.map_or(64, |n| n.0 as u8),
        max_errors: l.max_errors.map_or(20, |n| n.0),
        command_line_length: l.command_line_length.map_or(512, |n| n.0),
        text_line_length: l.text_line_length.map_or(1000, |n| n.0),
    };
    if limits.max_message_size == 0 {
        return Err(err(
            "limits.max_message_size",
            "must be greater than 0".into(),
        ));
    }
    // One message of the largest size, with room for its headers.
    let least = limits.max_message_size.saturating_add(64 * 1024);
    if limits.max_bytes_in_flight < least {
        return Err(err(
            "limits.max_bytes_in_flight",
            format!(
                "must be at least limits.max_message_size + 64KiB ({least} octets), or no message of the largest size could be received"
            ),
        ));
    }

    let t = raw.timeouts;
    let timeouts = Timeouts {
        command: t.command.map_or(Duration::from_secs(300), |d| d.0),
        data: t.data.map_or(Duration::from_secs(180), |d| d.0),
        write: t.write.map_or(Duration::from_secs(60), |d| d.0),
        session: t.session.map_or(Duration::from_secs(30 * 60), |d| d.0),
        tls_handshake: t.tls_handshake.map_or(Duration::from_secs(10), |d| d.0),
        shutdown: t.shutdown.map_or(Duration::from_secs(30), |d| d.0),
    };

    let q = raw.queue;
    let retry_intervals = q
        .retry_intervals
        .map(|v| v.into_iter().map(|d| d.0).collect::<Vec<_>>())
        .unwrap_or_else(|| {
            [60, 300, 900, 1800, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect()
        });
    if retry_intervals.is_empty() {
        return Err(err(
            "queue.retry_intervals",
            "needs at least one interval".into(),
        ));
    }
    let queue = QueueSettings {
        dir: q.dir.unwrap_or_else(|| data_dir.join("queue")),
        group_commit: q.group_commit.unwrap_or(true),
        cache_size: q.cache_size.map_or(32 * 1024 * 1024, |b| b.0),
        delivery_workers: q.delivery_workers.map_or(16, |n| n.0),
        retry_intervals,
        max_age: q
            .max_age
            .map_or(Duration::from_secs(5 * 24 * 3600), |d| d.0),
        delay_warning: Some(
            q.delay_warning
                .map_or(Duration::from_secs(4 * 3600), |d| d.0),
        )
        .filter(|d| !d.is_zero()),
    };

    let lc = raw.local;
    let users: Vec<String> = lc
        .users
        .unwrap_or_default()
        .into_iter()
        .map(|u| u.to_lowercase())
        .collect();
    for u in &users {
        if !crate::delivery::maildir::is_safe_mailbox(u) {
            return Err(err(
                "local.users",
                format!("{u:?} cannot be a mailbox name"),
            ));
        }
    }
    let recipient_delimiter = match lc.recipient_delimiter.as_deref() {
        None => Some('+'),
        Some("") => None,
        Some(s) if s.chars().count() == 1 => s.chars().next(),
        Some(s) => {
            return Err(err(
                "local.recipient_delimiter",
                format!("{s:?}: expected one character or \"\""),
            ));
        }
    };
    let postmaster = lc
        .postmaster
        .unwrap_or_else(|| "postmaster".into())
        .to_lowercase();
    if !crate::delivery::maildir::is_safe_mailbox(&postmaster) {
        return Err(err(
            "local.postmaster",
            format!("{postmaster:?} cannot be a mailbox name"),
        ));
    }
    let lmtp = match (lc.delivery.unwrap_or_default(), lc.lmtp) {
        (LocalDelivery::Lmtp, Some(t)) => {
            Some(crate::delivery::lmtp::LmtpTarget::parse(&t).map_err(|m| err("local.lmtp", m))?)
        }
        (LocalDelivery::Lmtp, None) => {
            return Err(err(
                "local.lmtp",
                "missing: delivery = \"lmtp\" needs the server (`127.0.0.1:24` or `unix:/path`)"
                    .into(),
            ));
        }
        (LocalDelivery::Maildir, Some(_)) => {
            return Err(err(
                "local.lmtp",
                "used only with delivery = \"lmtp\"".into(),
            ));
        }
        (LocalDelivery::Maildir, None) => None,
    };
    let local = LocalSettings {
        domains: lc
            .domains
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.0)
            .collect(),
        users,
        catch_all: lc.catch_all.unwrap_or(false),
        mail_dir: lc.mail_dir.unwrap_or_else(|| data_dir.join("mail")),
        recipient_delimiter,
        postmaster,
        line_endings: lc.line_endings.unwrap_or_default(),
        lmtp,
    };

    let tls = crate::tls::resolve(raw.tls, &data_dir).map_err(|(key, m)| err(&key, m))?;
    let auth = crate::auth::resolve_auth(raw.auth, &data_dir);
    let relay = crate::auth::resolve_relay(raw.relay);
    let outbound = crate::delivery::remote::config::resolve(raw.outbound, &hostname)
        .map_err(|(key, m)| err(&key, m))?;
    let admin = crate::admin::resolve(raw.admin).map_err(|(key, m)| err(&key, m))?;
    let authentication =
        crate::mailauth::resolve(raw.authentication, &hostname).map_err(|(key, m)| err(&key, m))?;
    let mut dkim = crate::mailauth::sign::resolve(raw.dkim).map_err(|(key, m)| err(&key, m))?;
    dkim.set_arc(
        crate::mailauth::arc::resolve(raw.arc, &dkim, &authentication)
            .map_err(|(key, m)| err(&key, m))?,
    );
    let kv = crate::plugin::kv::resolve(raw.kv).map_err(|(key, m)| err(&key, m))?;

    let trust = crate::plugin::sign::resolve(raw.plugin_trust).map_err(|(key, m)| err(&key, m))?;
    let mut plugins: Vec<PluginSpec> = Vec::new();
    for p in raw.plugins {
        if plugins.iter().any(|o| o.name == p.name) {
            return Err(err(
                "name",
                format!("plugin name {:?} is used twice", p.name),
            ));
        }
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                "name",
                format!(
                    "plugin name {:?}: expected letters, digits, '-' or '_'",
                    p.name
                ),
            ));
        }
        let sha256 = match p.sha256 {
            Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => {
                Some(h.to_lowercase())
            }
            Some(h) => {
                return Err(err(
                    "sha256",
                    format!("{h:?} is not a sha256 hex digest (64 hex digits)"),
                ));
            }
            None => None,
        };
        let path = match (p.path, &p.oci, &sha256) {
            (Some(path), None, _) => path,
            (None, Some(r), Some(pin)) => {
                crate::plugin::oci::parse_reference(r).map_err(|e| err("oci", e.to_string()))?;
                data_dir.join("plugins").join(format!("{pin}.wasm"))
            }
            (None, Some(_), None) => {
                return Err(err(
                    "oci",
                    format!(
                        "plugin {:?}: `oci` needs `sha256` (the digest `wasmtp plugin pull` prints), so what runs cannot change under the same tag",
                        p.name
                    ),
                ));
            }
            _ => {
                return Err(err(
                    "name",
                    format!("plugin {:?}: give exactly one of `path` and `oci`", p.name),
                ));
            }
        };
        let default_timeout = p.timeout.map_or(Duration::from_millis(500), |d| d.0);
        let timeouts = HookName::ALL
            .iter()
            .map(|h| (*h, p.timeouts.get(h).map_or(default_timeout, |d| d.0)))
            .collect();
        let config = p.config.unwrap_or_default();
        let mut grants = p.grants;
        let http = match p.http {
            Some(raw) => {
                let g = crate::plugin::http::resolve(raw)
                    .map_err(|(key, m)| err(&format!("plugin.http.{key}"), m))?;
                if !grants.contains(&Grant::Http) {
                    grants.push(Grant::Http);
                }
                Some(std::sync::Arc::new(g))
            }
            None if grants.contains(&Grant::Http) => {
                return Err(err(
                    "grants",
                    format!(
                        "plugin {:?}: the \"http\" grant needs the hosts it may reach: give the plugin an `http` table instead, e.g. http = {{ allowed_hosts = [\"rspamd.example:11333\"] }}",
                        p.name
                    ),
                ));
            }
            None => None,
        };
        plugins.push(PluginSpec {
            name: p.name,
            path,
            oci: p.oci,
            trust: trust.clone(),
            sha256,
            hooks_configured: p.hooks.is_some(),
            hooks: p.hooks.unwrap_or_else(|| HookName::ALL.to_vec()),
            grants,
            http,
            on_error: p.on_error.unwrap_or_default(),
            timeouts,
            memory: p.memory.map_or(64 * 1024 * 1024, |b| b.0),
            config_json: serde_json::to_string(&config).expect("TOML table converts to JSON"),
            reuse_configured: p.reuse.is_some(),
            reuse: p.reuse.unwrap_or(0),
            standby: p.standby.map(|n| n.0 as u32),
            snapshot: p.snapshot.unwrap_or(true),
        });
    }
    let dns = DnsSettings {
        nameservers: raw.dns.nameservers,
        timeout: raw.dns.timeout.map_or(Duration::from_secs(5), |d| d.0),
    };

    let pl = raw.plugin_limits;
    let d = PluginLimits::default();
    let plugin_limits = PluginLimits {
        max_notes: pl.max_notes.map_or(d.max_notes, |n| n.0),
        max_notes_size: pl.max_notes_size.map_or(d.max_notes_size, |b| b.0),
        max_kv_key: pl.max_kv_key.map_or(d.max_kv_key, |b| b.0),
        max_kv_value: pl.max_kv_value.map_or(d.max_kv_value, |b| b.0),
        max_kv_size: pl.max_kv_size.map_or(d.max_kv_size, |b| b.0),
        kv_sweep_interval: pl.kv_sweep_interval.map_or(d.kv_sweep_interval, |x| x.0),
        log_lines_per_second: pl.log_lines_per_second.map_or(d.log_lines_per_second, |n| {
            n.0.min(u32::MAX as usize) as u32
        }),
        max_modifications: pl.max_modifications.map_or(d.max_modifications, |n| n.0),
        // Each slot reserves `memory_reservation` of address space (4 GiB by
        // default): 10,000 of them is 40 TiB of the 128 TiB a process has.
        pool_instances: pl
            .pool_instances
            .unwrap_or((limits.max_connections * plugins.len().max(1)).min(10_000)),
        memory_reservation: pl.memory_reservation.map_or(d.memory_reservation, |b| b.0),
        compile_timeout: pl.compile_timeout.map_or(d.compile_timeout, |x| x.0),
        stateless_reuse: pl.stateless_reuse.unwrap_or(d.stateless_reuse),
        standby: pl.standby.map_or(d.standby, |n| n.0 as u32),
    };
    if plugin_limits.memory_reservation < 64 * 1024 {
        return Err(err(
            "plugin_limits.memory_reservation",
            "must be at least 64KiB (one WebAssembly page)".into(),
        ));
    }
    if plugin_limits.compile_timeout.is_zero() {
        return Err(err(
            "plugin_limits.compile_timeout",
            "must be greater than 0".into(),
        ));
    }
    if plugin_limits.kv_sweep_interval.is_zero() {
        return Err(err(
            "plugin_limits.kv_sweep_interval",
            "must be greater than 0".into(),
        ));
    }

    Ok(Settings {
        plugins,
        dns,
        plugin_limits,
        tls,
        auth,
        relay,
        outbound,
        admin,
        authentication,
        dkim,
        kv,
        source: name.to_string(),
        hostname,
        data_dir,
        listeners,
        limits,
        timeouts,
        queue,
        local,
        log_format: raw.log.format.unwrap_or_default(),
        log_level: raw.log.level.unwrap_or_else(|| "info".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let s = Settings::embedded_default().unwrap();
        assert_eq!(s.listeners[0].address, "127.0.0.1:2525".parse().unwrap());
        assert!(s.local.catch_all);
        assert_eq!(s.local.domains, ["localhost", "example.test"]);
    }

    #[test]
    fn unknown_key_is_located() {
        let src = "[[listener]]\naddress = \"127.0.0.1:25\"\n\n[limits]\nmax_mesage_size = 10\n";
        let e = Settings::parse(src, "x.toml").unwrap_err();
        assert_eq!(e.position, Some((5, 1)), "{e}");
        assert!(e.to_string().starts_with("x.toml:5:1"), "{e}");
        assert!(e.message.contains("max_mesage_size"), "{e}");
    }

    #[test]
    fn bad_values_are_located() {
        let cases = [
            (
                "[[listener]]\naddress = \"nope\"\n",
                2,
                "listener[0].address",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[limits]\nmax_message_size = \"10 parsecs\"\n",
                4,
                "limits.max_message_size",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[limits]\nmax_recipients = 5\n",
                4,
                "limits.max_recipients",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[limits]\nipv6_prefix = 16\n",
                4,
                "limits.ipv6_prefix",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[plugin_limits]\nstandby = 65\n",
                4,
                "plugin_limits.standby",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[auth]\nmax_verifications = 0\n",
                4,
                "auth.max_verifications",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[timeouts]\ncommand = \"soon\"\n",
                4,
                "timeouts.command",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[local]\ndomains = [\"ok.test\", \"bad domain\"]\n",
                4,
                "local.domains[1]",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[local]\ndelivery = \"lmtp\"\nlmtp = \"localhost\"\n",
                5,
                "local.lmtp",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[local]\nlmtp = \"unix:/run/lmtp\"\n",
                4,
                "local.lmtp",
            ),
        ];
        for (src, line, key) in cases {
            let e = Settings::parse(src, "f.toml").unwrap_err();
            assert_eq!(e.position.map(|p| p.0), Some(line), "{e}");
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
        }
    }
}
