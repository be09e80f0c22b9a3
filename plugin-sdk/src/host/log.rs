//! Logging into the server's log (always granted). Lines are tagged with the plugin and hook.

#[cfg(not(fake_host))]
use crate::bindings::wasmtp::plugin::log as wit;

pub use crate::bindings::wasmtp::plugin::log::Level;

/// Writes one line at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(not(fake_host))]
    wit::log(level, message);
    #[cfg(fake_host)]
    crate::testing::with_state(|s| s.logs.push((level, message.to_string())));
}

/// Writes a debug line.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Writes an info line.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Writes a warning line.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Writes an error line.
pub fn error(message: &str) {
    log(Level::Error, message)
}
