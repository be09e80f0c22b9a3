//! wasmtp: an SMTP server whose policy is written as sandboxed WebAssembly
//! components.
//!
//! Architecture: `server` accepts connections and runs one `session` task
//! per client. The session moves bytes; the protocol itself (commands,
//! replies, addresses, the DATA decoder) is pure data in `smtp`. An
//! accepted message is written to the `queue` store and flushed before the
//! 250; the queue manager hands it to `delivery` (Maildir or LMTP for local
//! recipients, the SMTP client for remote ones) and retries temporary
//! failures. `config` turns the TOML file into resolved
//! settings once at start; `observe` sets up logging; `metrics` names every
//! metric; `admin` serves them, health, status and the queue commands.
//!
//! | module | owns |
//! |---|---|
//! | `config` | raw TOML structs, resolved `Settings`, located errors |
//! | `server` | listeners, accept loop, connection limits, shutdown |
//! | `session` | one connection: state machine and byte shell |
//! | `smtp` | command parser, replies, addresses, DATA decoder; the client side: reply parser, EHLO capabilities, MAIL/RCPT lines, dot stuffing |
//! | `queue` | sled store with group commit, queue manager, operator commands (`control`) |
//! | `delivery` | local recipients, Maildir writer, LMTP target, outcome classes; `remote`: routes, the SMTP/LMTP client, TLS policy, connection pool, classification |
//! | `dns` | the resolver built from `[dns]`, shared by plugins and outbound routing |
//! | `observe` | tracing setup, limit counters |
//! | `metrics` | the metrics facade (Prometheus names, one-line recording calls) |
//! | `admin` | the admin endpoint (HTTP on loopback or a Unix socket) and the CLI's client for it |
//! | `tls` | certificates, SNI, reload, the rustls acceptor |
//! | `auth` | AUTH settings, SASL mechanisms, failure throttle, relay networks |
//! | `users` | the users file (argon2id), reloaded on change, bounded checks |
//! | `mailauth` | SPF/DKIM/ARC/DMARC verification into Authentication-Results, DKIM signing keys and signing, ARC sealing, `dkim keygen` |
//! | `fuzz` | fuzz targets, run by `fuzz/` and as property tests |

pub mod admin;
pub mod auth;
pub mod config;
pub mod delivery;
pub mod dns;
#[doc(hidden)]
pub mod fuzz;
pub mod mailauth;
pub mod metrics;
pub mod observe;
pub mod plugin;
pub mod queue;
pub mod server;
pub mod session;
pub mod smtp;
pub mod syncfs;
pub mod tls;
pub mod users;
