//! The contract versions this host serves, side by side: `wasmtp:plugin@0.2.0` (the current
//! `wit/`, bound in `super::bindings`) and `wasmtp:plugin@0.1.0` (frozen in `wit/0.1.0/`, bound
//! here). A component says which one it was built against by the `hooks` interface it exports;
//! `Contract::of` reads that before linking, and the host links and calls it through that
//! version's bindings.
//!
//! The host works in 0.2.0's types. A 0.1.0 plugin's capability imports (log, notes, kv, dns,
//! clock, the message resource) are served by the same implementations through the thin
//! adapters below, and its hook arguments and answers are converted field by field: the two
//! versions' records are the same shapes under different interface names, and 0.1.0's message
//! simply has no `auth-results`.
//!
//! Why a second package version and not `@since` gates in one package: the component model
//! names every import and export with its package version, and for 0.x versions a minor bump is
//! not semver-compatible, so a component built against 0.1.0 imports
//! `wasmtp:plugin/types@0.1.0` and no 0.2.0 definition satisfies it. Gates would still leave
//! two versions to link; keeping 0.1.0 as its own frozen file makes it impossible to edit by
//! accident.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::component::{Component, ComponentExportIndex, Func, Instance, Resource, TypedFunc};
use wasmtime::{Engine, Store};

use super::bindings::wasmtp::plugin as v2;
use super::host::HostState;
use super::message::MessageRes;

/// Bindings generated from `wit/0.1.0/` (world `plugin`).
pub mod v010 {
    super::super::plugin_bindings!("wit/0.1.0");
}

use v010::wasmtp::plugin as v1;

/// A contract version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `wasmtp:plugin@0.1.0`.
    V0_1,
    /// `wasmtp:plugin@0.2.0`, the current one.
    V0_2,
}

/// Every version served, oldest first.
pub const SERVED: [Contract; 2] = [Contract::V0_1, Contract::V0_2];

impl Contract {
    /// The package name, e.g. `wasmtp:plugin@0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::V0_1 => "wasmtp:plugin@0.1.0",
            Contract::V0_2 => "wasmtp:plugin@0.2.0",
        }
    }

    /// The version alone, e.g. `0.2.0`.
    pub fn version(self) -> &'static str {
        &self.as_str()["wasmtp:plugin@".len()..]
    }

    /// The version named by an interface name such as `wasmtp:plugin/hooks@0.1.0` or a package
    /// name such as `wasmtp:plugin@0.1.0`; None for another package or a version not served.
    pub fn of_name(name: &str) -> Option<Contract> {
        let (base, version) = name.split_once('@')?;
        if base != "wasmtp:plugin" && !base.starts_with("wasmtp:plugin/") {
            return None;
        }
        SERVED.into_iter().find(|c| c.version() == version)
    }

    /// The version whose `hooks` a component exports (by its export names).
    pub fn of_exports<'a>(exports: impl IntoIterator<Item = &'a str>) -> Result<Contract, String> {
        let mut other = None;
        for name in exports {
            if name.starts_with("wasmtp:plugin/hooks") {
                match Contract::of_name(name) {
                    Some(c) => return Ok(c),
                    None => other = Some(name.to_string()),
                }
            }
        }
        Err(match other {
            Some(name) => format!(
                "it exports {name}, a contract version this server does not serve (it serves {})",
                served_list()
            ),
            None => format!(
                "it exports no wasmtp:plugin/hooks interface (this server serves {})",
                served_list()
            ),
        })
    }

    /// The version of a compiled component.
    pub fn of(engine: &Engine, component: &Component) -> Result<Contract, String> {
        let ty = component.component_type();
        let names: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        Contract::of_exports(names.iter().map(String::as_str))
    }
}

/// Sets `wasmtp_plugins_loaded{contract}` for every served version from `set`.
pub fn record_loaded(set: &super::PluginSet) {
    for c in SERVED {
        let n = set.plugins.iter().filter(|p| p.contract == c).count();
        crate::metrics::plugins_loaded(c.as_str(), n);
    }
}

/// `wasmtp:plugin@0.1.0, wasmtp:plugin@0.2.0`.
pub fn served_list() -> String {
    SERVED.map(Contract::as_str).join(", ")
}

/// A pre-linked plugin of either version.
#[derive(Clone)]
pub(crate) enum Pre {
    V0_1(v010::PluginPre<HostState>),
    V0_2(Pre2),
}

/// A live instance's exports of either version.
pub(crate) enum Guest {
    V0_1(v010::Plugin),
    V0_2(Hooks),
}

/// A pre-linked plugin of the current contract: the component, where its
/// hooks are, and whether an instance of it has had its hooks' types
/// checked.
#[derive(Clone)]
pub(crate) struct Pre2 {
    pre: wasmtime::component::InstancePre<HostState>,
    /// Every hook's export (`new` fails if one is missing).
    at: HookIndices,
    /// Set once one instance's exports matched `Hooks`' signatures. Every
    /// instance of one pre-linked component has the same export types, so
    /// the later ones only look their hooks up: checking ten signatures per
    /// instance (what the bindings' `load` does, comparing every record's
    /// field names) was 14% of a fresh three-plugin transaction.
    checked: Arc<AtomicBool>,
}

/// A component exports every hook of the current contract by name, but
/// one of them with other types (built against an edited copy of the WIT).
#[derive(Debug, thiserror::Error)]
#[error(
    "its hooks do not have the types of wasmtp:plugin@0.2.0 ({0}); rebuild it against the contract's WIT"
)]
pub(crate) struct Mistyped(String);

/// Declares the current contract's hooks once: where each is exported, its
/// signature (checked on a component's first instance, then trusted), and a
/// method that calls it.
macro_rules! hooks {
    ($($field:ident $name:literal ($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Where each hook of the current contract is exported.
        #[derive(Clone)]
        struct HookIndices {
            $($field: ComponentExportIndex,)*
        }

        impl HookIndices {
            fn new(component: &Component) -> wasmtime::Result<HookIndices> {
                let name = Contract::V0_2.as_str().replace('@', "/hooks@");
                let iface = component
                    .get_export_index(None, name.as_str())
                    .ok_or_else(|| wasmtime::format_err!("no exported instance named `{name}`"))?;
                Ok(HookIndices {
                    $($field: component
                        .get_export_index(Some(&iface), $name)
                        .ok_or_else(|| wasmtime::format_err!("`{name}` exports no `{}`", $name))?,)*
                })
            }
        }

        /// The hooks of one live instance of the current contract.
        pub(crate) struct Hooks {
            $($field: Func,)*
        }

        impl Hooks {
            /// The hooks of `instance`; `check` compares each one's type with
            /// the signature its method calls it with.
            fn load(
                store: &mut Store<HostState>,
                instance: &Instance,
                at: &HookIndices,
                check: bool,
            ) -> wasmtime::Result<Hooks> {
                Ok(Hooks {
                    $($field: if check {
                        *instance
                            .get_typed_func::<($($ty,)*), $ret>(&mut *store, &at.$field)
                            .map_err(|e| wasmtime::Error::new(Mistyped(format!("{}: {e:#}", $name))))?
                            .func()
                    } else {
                        instance
                            .get_func(&mut *store, &at.$field)
                            .ok_or_else(|| wasmtime::format_err!("no hook `{}`", $name))?
                    },)*
                })
            }

            $(
                pub(crate) async fn $field(
                    &self,
                    store: &mut Store<HostState>,
                    $($arg: $ty),*
                ) -> wasmtime::Result<$ret> {
                    // SAFETY: `Pre2::instantiate` loads hooks unchecked only
                    // after an instance of the same pre-linked component
                    // passed `load`'s check of this very signature.
                    let f = unsafe { TypedFunc::<($($ty,)*), $ret>::new_unchecked(self.$field) };
                    f.call_async(store, ($($arg,)*)).await
                }
            )*
        }
    };
}

hooks! {
    init "init" (config: &str) -> (Result<(), String>,);
    connect "connect" (conn: &v2::types::Connection) -> (v2::types::Verdict,);
    ehlo "ehlo" (conn: &v2::types::Connection, name: &str) -> (v2::types::Verdict,);
    mail_from "mail-from" (
        conn: &v2::types::Connection,
        sender: &str,
        params: &[(String, Option<String>)]
    ) -> (v2::types::Outcome,);
    rcpt "rcpt" (
        conn: &v2::types::Connection,
        env: &v2::types::Envelope,
        rcpt: &v2::types::Recipient
    ) -> (v2::types::Outcome,);
    data "data" (
        conn: &v2::types::Connection,
        env: &v2::types::Envelope,
        msg: Resource<MessageRes>
    ) -> (v2::types::Outcome,);
    deliver "deliver" (
        conn: &v2::types::Connection,
        env: &v2::types::Envelope
    ) -> (Vec<v2::types::Route>,);
    delivered "delivered" (report: &v2::types::DeliveryReport) -> ();
    deferred "deferred" (report: &v2::types::DeliveryReport) -> ();
    bounced "bounced" (report: &v2::types::DeliveryReport) -> ();
}

impl Pre2 {
    fn new(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Pre2> {
        Ok(Pre2 {
            at: HookIndices::new(pre.component())?,
            pre,
            checked: Arc::default(),
        })
    }

    async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<(Hooks, Instance)> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let check = !self.checked.load(Ordering::Acquire);
        let hooks = Hooks::load(store, &instance, &self.at, check)?;
        if check {
            self.checked.store(true, Ordering::Release);
        }
        Ok((hooks, instance))
    }
}

impl Pre {
    pub(crate) fn new(
        contract: Contract,
        pre: wasmtime::component::InstancePre<HostState>,
    ) -> wasmtime::Result<Pre> {
        Ok(match contract {
            Contract::V0_1 => Pre::V0_1(v010::PluginPre::new(pre)?),
            Contract::V0_2 => Pre::V0_2(Pre2::new(pre)?),
        })
    }

    pub(crate) async fn instantiate_async(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Guest> {
        Ok(match self {
            Pre::V0_1(p) => Guest::V0_1(p.instantiate_async(store).await?),
            Pre::V0_2(p) => Guest::V0_2(p.instantiate(store).await?.0),
        })
    }

    /// The same, with the component instance behind the bindings (the init snapshot reads the
    /// memories through exports the bindings do not know).
    pub(crate) async fn instantiate_raw(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<(Guest, wasmtime::component::Instance)> {
        Ok(match self {
            Pre::V0_1(p) => {
                let i = p.instance_pre().instantiate_async(&mut *store).await?;
                (Guest::V0_1(v010::Plugin::new(&mut *store, &i)?), i)
            }
            Pre::V0_2(p) => {
                let (hooks, i) = p.instantiate(store).await?;
                (Guest::V0_2(hooks), i)
            }
        })
    }
}

impl Guest {
    /// The plugin's `init`.
    pub(crate) async fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Guest::V0_1(p) => p.wasmtp_plugin_hooks().call_init(store, config).await,
            Guest::V0_2(p) => Ok(p.init(store, config).await?.0),
        }
    }
}

/// Links both versions' host functions.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<HostState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    super::bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    v010::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

// Arguments: 0.2.0 → 0.1.0.

pub(crate) fn connection(c: &v2::types::Connection) -> v1::types::Connection {
    v1::types::Connection {
        session_id: c.session_id.clone(),
        peer_ip: c.peer_ip.clone(),
        peer_port: c.peer_port,
        local_ip: c.local_ip.clone(),
        local_port: c.local_port,
        listener: c.listener.clone(),
        tls: c.tls.as_ref().map(|t| v1::types::TlsInfo {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            sni: t.sni.clone(),
        }),
        authenticated: c.authenticated.clone(),
        helo: c.helo.clone(),
    }
}

pub(crate) fn recipient(r: &v2::types::Recipient) -> v1::types::Recipient {
    v1::types::Recipient {
        address: r.address.clone(),
        params: r.params.clone(),
    }
}

pub(crate) fn envelope(e: &v2::types::Envelope) -> v1::types::Envelope {
    v1::types::Envelope {
        sender: e.sender.clone(),
        sender_params: e.sender_params.clone(),
        recipients: e.recipients.iter().map(recipient).collect(),
    }
}

pub(crate) fn report(r: &v2::types::DeliveryReport) -> v1::types::DeliveryReport {
    v1::types::DeliveryReport {
        queue_id: r.queue_id.clone(),
        sender: r.sender.clone(),
        recipient: r.recipient.clone(),
        attempts: r.attempts,
        detail: r.detail.clone(),
    }
}

// Answers: 0.1.0 → 0.2.0.

fn reply(r: v1::types::Reply) -> v2::types::Reply {
    v2::types::Reply {
        code: r.code,
        enhanced: r.enhanced,
        text: r.text,
    }
}

pub(crate) fn verdict(v: v1::types::Verdict) -> v2::types::Verdict {
    use v1::types::Verdict as V;
    use v2::types::Verdict as W;
    match v {
        V::Continue => W::Continue,
        V::Accept(r) => W::Accept(r.map(reply)),
        V::Reject(r) => W::Reject(r.map(reply)),
        V::Tempfail(r) => W::Tempfail(r.map(reply)),
        V::Disconnect(r) => W::Disconnect(r.map(reply)),
        V::Discard => W::Discard,
        V::Quarantine(s) => W::Quarantine(s),
    }
}

fn header(h: v1::types::Header) -> v2::types::Header {
    v2::types::Header {
        name: h.name,
        value: h.value,
    }
}

fn modification(m: v1::types::Modification) -> v2::types::Modification {
    use v1::types::Modification as M;
    use v2::types::Modification as N;
    match m {
        M::AddHeader(h) => N::AddHeader(header(h)),
        M::RemoveHeader(n) => N::RemoveHeader(n),
        M::ChangeHeader(h) => N::ChangeHeader(header(h)),
        M::SetSender(s) => N::SetSender(s),
        M::AddRecipient(s) => N::AddRecipient(s),
        M::RemoveRecipient(s) => N::RemoveRecipient(s),
    }
}

pub(crate) fn outcome(o: v1::types::Outcome) -> v2::types::Outcome {
    v2::types::Outcome {
        verdict: verdict(o.verdict),
        modifications: o.modifications.into_iter().map(modification).collect(),
    }
}

pub(crate) fn route(r: v1::types::Route) -> v2::types::Route {
    use v1::types::Route as R;
    use v2::types::Route as S;
    match r {
        R::Default => S::Default,
        R::Local(m) => S::Local(m),
        R::Relay(t) => S::Relay(v2::types::RelayTarget {
            host: t.host,
            port: t.port,
        }),
        R::Discard => S::Discard,
    }
}

// Capabilities: 0.1.0's imports served by the 0.2.0 implementations.

impl v1::types::Host for HostState {}

impl v1::types::HostMessage for HostState {
    fn headers(&mut self, this: Resource<MessageRes>) -> wasmtime::Result<Vec<v1::types::Header>> {
        Ok(v2::types::HostMessage::headers(self, this)?
            .into_iter()
            .map(|h| v1::types::Header {
                name: h.name,
                value: h.value,
            })
            .collect())
    }
    fn header(
        &mut self,
        this: Resource<MessageRes>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        v2::types::HostMessage::header(self, this, name)
    }
    fn size(&mut self, this: Resource<MessageRes>) -> wasmtime::Result<u64> {
        v2::types::HostMessage::size(self, this)
    }
    fn body(
        &mut self,
        this: Resource<MessageRes>,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        v2::types::HostMessage::body(self, this, offset, len)
    }
    fn text(&mut self, this: Resource<MessageRes>, max_bytes: u32) -> wasmtime::Result<String> {
        v2::types::HostMessage::text(self, this, max_bytes)
    }
    fn drop(&mut self, this: Resource<MessageRes>) -> wasmtime::Result<()> {
        v2::types::HostMessage::drop(self, this)
    }
}

impl v1::log::Host for HostState {
    fn log(&mut self, level: v1::log::Level, message: String) -> wasmtime::Result<()> {
        use v1::log::Level as L;
        use v2::log::Level as M;
        let level = match level {
            L::Trace => M::Trace,
            L::Debug => M::Debug,
            L::Info => M::Info,
            L::Warn => M::Warn,
            L::Error => M::Error,
        };
        v2::log::Host::log(self, level, message)
    }
}

impl v1::notes::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        v2::notes::Host::get(self, key)
    }
    fn set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        v2::notes::Host::set(self, key, value)
    }
    fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        v2::notes::Host::remove(self, key)
    }
    fn entries(&mut self, prefix: String) -> wasmtime::Result<Vec<(String, String)>> {
        v2::notes::Host::entries(self, prefix)
    }
}

impl v1::kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        v2::kv::Host::get(self, key).await
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<(), String>> {
        v2::kv::Host::set(self, key, value, ttl).await
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        v2::kv::Host::delete(self, key).await
    }
    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<i64, String>> {
        v2::kv::Host::incr(self, key, delta, ttl).await
    }
}

impl v1::clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        v2::clock::Host::now(self)
    }
}

fn dns_error(e: v2::dns::DnsError) -> v1::dns::DnsError {
    use v1::dns::DnsError as E;
    use v2::dns::DnsError as F;
    match e {
        F::NotFound => E::NotFound,
        F::Timeout => E::Timeout,
        F::InvalidName => E::InvalidName,
        F::Failed(s) => E::Failed(s),
    }
}

type Dns<T> = wasmtime::Result<Result<T, v1::dns::DnsError>>;

impl v1::dns::Host for HostState {
    async fn a(&mut self, name: String) -> Dns<Vec<String>> {
        Ok(v2::dns::Host::a(self, name).await?.map_err(dns_error))
    }
    async fn aaaa(&mut self, name: String) -> Dns<Vec<String>> {
        Ok(v2::dns::Host::aaaa(self, name).await?.map_err(dns_error))
    }
    async fn mx(&mut self, name: String) -> Dns<Vec<v1::dns::MxRecord>> {
        Ok(v2::dns::Host::mx(self, name)
            .await?
            .map_err(dns_error)
            .map(|v| {
                v.into_iter()
                    .map(|m| v1::dns::MxRecord {
                        preference: m.preference,
                        exchange: m.exchange,
                    })
                    .collect()
            }))
    }
    async fn txt(&mut self, name: String) -> Dns<Vec<String>> {
        Ok(v2::dns::Host::txt(self, name).await?.map_err(dns_error))
    }
    async fn ptr(&mut self, ip: String) -> Dns<Vec<String>> {
        Ok(v2::dns::Host::ptr(self, ip).await?.map_err(dns_error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_names() {
        assert_eq!(
            Contract::of_name("wasmtp:plugin/kv@0.1.0"),
            Some(Contract::V0_1)
        );
        assert_eq!(
            Contract::of_name("wasmtp:plugin@0.2.0"),
            Some(Contract::V0_2)
        );
        assert_eq!(Contract::of_name("wasmtp:plugin/kv@0.3.0"), None);
        assert_eq!(Contract::of_name("wasi:cli/stdout@0.2.0"), None);
        assert_eq!(
            Contract::of_exports(["wasmtp:plugin/hooks@0.1.0"]),
            Ok(Contract::V0_1)
        );
        let e = Contract::of_exports(["wasmtp:plugin/hooks@0.9.0"]).unwrap_err();
        assert!(
            e.contains("@0.9.0") && e.contains("wasmtp:plugin@0.2.0"),
            "{e}"
        );
        let e = Contract::of_exports(["other:thing/run"]).unwrap_err();
        assert!(e.contains("no wasmtp:plugin/hooks"), "{e}");
    }
}
