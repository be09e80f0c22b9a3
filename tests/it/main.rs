//! Integration tests: the real `wasmtp` binary over real TCP sockets, with
//! real clients (lettre, Python's smtplib, swaks).

mod clients;
mod config;
mod data;
mod durability;
mod plugins;
mod protocol;
mod support;
