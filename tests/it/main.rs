//! Integration tests: the real `wasmtp` binary over real TCP sockets, with
//! real clients (lettre, Python's smtplib, swaks).

mod auth;
mod clients;
mod config;
mod data;
mod dns;
mod dsn;
mod durability;
mod hostile;
mod ops;
mod outbound;
mod plugin_hooks;
mod plugin_limits;
mod plugin_platform;
mod plugins;
mod protocol;
mod queue_recovery;
mod relay;
mod routing;
mod signing;
mod storage;
mod support;
mod tls;
