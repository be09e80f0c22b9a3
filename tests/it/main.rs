//! Integration tests: the real `wasmtp` binary over real TCP sockets, with
//! real clients (lettre, Python's smtplib, swaks).

mod arc;
mod auth;
mod clients;
mod config;
mod contract_versions;
mod data;
mod dmarc_policy;
mod dns;
mod dsn;
mod durability;
mod footprint;
mod hostile;
mod http_plugins;
mod mail_auth;
mod ops;
mod outbound;
mod perf;
mod plugin_dev;
mod plugin_hooks;
mod plugin_limits;
mod plugin_platform;
mod plugin_sdks;
mod plugins;
mod protocol;
mod queue_recovery;
mod relay;
mod routing;
mod scale;
mod signing;
mod storage;
mod support;
mod tls;
mod tls_policy;
