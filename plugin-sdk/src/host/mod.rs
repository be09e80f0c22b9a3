//! Host capabilities as plain functions. Each calls the real host import on wasm32, or the fake
//! host of the `testing` feature on a native target. A plugin imports only the interfaces whose
//! functions it calls, so never calling `kv`, `dns` or `clock` means not needing their grants.

pub mod clock;
pub mod dns;
pub mod kv;
pub mod log;
pub mod notes;
