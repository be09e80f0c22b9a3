//! The Rust SDK for wasmtp plugins: it owns the generated bindings of the `wasmtp:plugin` WIT
//! package so that plugin authors never see them.
//!
//! An author implements [`Plugin`] (every hook defaults to "no opinion"), calls [`export!`] once,
//! and builds the crate for `wasm32-wasip2`. Hooks receive plain Rust data ([`Connection`],
//! [`Envelope`], [`Message`]) and answer with a [`Verdict`] or an [`Outcome`] (a verdict plus
//! [`Modification`]s). Host capabilities are plain functions in [`log`], [`notes`], [`kv`],
//! [`dns`] and [`clock`]; `kv`, `dns` and `clock` work only when the server config grants them,
//! and a plugin that never calls them does not import them.
//!
//! With the `testing` feature on a native target, the capability functions talk to an in-memory
//! fake host instead (see [`testing`]), so plugin logic is unit-tested with plain `cargo test`.
//!
//! ```
//! use wasmtp_plugin_sdk::{Config, Connection, Plugin, Verdict};
//!
//! struct NoLocalhost;
//!
//! impl Plugin for NoLocalhost {
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(NoLocalhost)
//!     }
//!     fn ehlo(&self, _conn: &Connection, name: &str) -> Verdict {
//!         if name.eq_ignore_ascii_case("localhost") {
//!             Verdict::reject("you are not localhost")
//!         } else {
//!             Verdict::Continue
//!         }
//!     }
//! }
//!
//! wasmtp_plugin_sdk::export!(NoLocalhost);
//! ```
#![deny(missing_docs)]

mod config;
mod export;
mod helpers;
mod host;
pub mod manifest;
mod message;
pub mod net;
mod plugin;
#[cfg(fake_host)]
pub mod testing;

pub use config::Config;
pub use host::{clock, dns, kv, log, notes};
pub use message::Message;
pub use plugin::Plugin;

/// What the server's mail authentication found, as [`Message::auth_results`] returns it
/// (contract 0.2.0).
pub use bindings::wasmtp::plugin::types::{
    ArcCheck, AuthResult, AuthResults, DkimCheck, DmarcCheck, DmarcDisposition, SpfCheck,
    SpfIdentity,
};
pub use bindings::wasmtp::plugin::types::{
    Connection, DeliveryReport, Envelope, Header, Modification, Outcome, Params, Recipient,
    RelayTarget, Reply, Route, TlsInfo, Verdict,
};

/// The wit-bindgen output for the `plugin` world. Private: authors use the re-exported types and
/// the wrappers; the export macro reaches it through `__private`.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_bindings",
        default_bindings_module: "wasmtp_plugin_sdk::__private::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

/// Not part of the public API: what [`export!`] expands to needs these paths.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings;
    pub use crate::bindings::__export_plugin_bindings;
    pub use crate::export::Exports;
}

/// Exports a type implementing [`Plugin`] as the plugin's hooks. Call it once, at the crate root
/// of a `cdylib` crate built for `wasm32-wasip2`:
///
/// ```
/// # use wasmtp_plugin_sdk::{Config, Plugin};
/// # struct MyPlugin;
/// # impl Plugin for MyPlugin {
/// #     fn init(_: Config) -> Result<Self, String> { Ok(MyPlugin) }
/// # }
/// wasmtp_plugin_sdk::export!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            type WasmtpPluginExports = $crate::__private::Exports<$plugin>;
            $crate::__private::__export_plugin_bindings!(
                WasmtpPluginExports with_types_in $crate::__private::bindings
            );
        };
    };
}
