//! Pre-initialised instances: a plugin's `init` runs once per load, and every fresh instance
//! starts from the state it left.
//!
//! At load the component is instrumented (wasmtime-wizer adds exports that read each core
//! module's memory and globals), instantiated once, and its `init` is called with the plugin's
//! config in a sealed store (`HostState::sealed`: kv, dns, clock, notes and http refuse, because
//! what they answered would be frozen into every instance; `log` works, once, at load). The
//! state `init` leaves is written back into the component as its data segments and global
//! initialisers, and that component is what instances are made from: a fresh instance is the
//! state `init` left without running it, and the pool resets a slot to that state between
//! transactions as it did to the original image. Each transaction still gets an instance of its
//! own, so what the fresh modes guarantee is unchanged.
//!
//! A plugin whose `init` uses a capability, or that cannot be instrumented, runs `init` in
//! every instance as before; `plugin loaded` says which (`snapshot=`), and `snapshot = false`
//! on the plugin asks for that.

use wasmtime::Store;
use wasmtime::component::{Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentContext, ComponentInstanceState, Wizer};

use super::contract::Pre;
use super::host::{HostState, SEALED};

/// Why no snapshot was taken.
#[derive(Debug)]
pub(crate) enum NoSnapshot {
    /// `init` called a capability: it runs per instance (expected for some plugins).
    UsesCapability(String),
    /// `init` refused its config or trapped: the plain path runs it again and reports that as
    /// the load error.
    InitFailed(String),
    /// Anything else: instrumenting, compiling, `init` refusing or trapping, reading the state.
    Failed(String),
}

impl std::fmt::Display for NoSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoSnapshot::UsesCapability(s) | NoSnapshot::InitFailed(s) | NoSnapshot::Failed(s) => {
                f.write_str(s)
            }
        }
    }
}

/// Instruments `bytes`: the context the snapshot needs and the instrumented component.
pub(crate) fn instrument(bytes: &[u8]) -> Result<(ComponentContext<'_>, Vec<u8>), NoSnapshot> {
    Wizer::new()
        .instrument_component(bytes)
        .map_err(|e| NoSnapshot::Failed(format!("cannot instrument it: {e:#}")))
}

/// Instantiates `pre` (the instrumented component) in `store`, whose state must be sealed, runs
/// `init(config)` and returns the component rewritten with the state `init` left.
pub(crate) async fn take(
    cx: &ComponentContext<'_>,
    pre: &Pre,
    store: &mut Store<HostState>,
    config: &str,
) -> Result<Vec<u8>, NoSnapshot> {
    let failed = |what: &str, e: wasmtime::Error| {
        let text = format!("{e:#}");
        if text.contains(SEALED) {
            NoSnapshot::UsesCapability(text)
        } else {
            NoSnapshot::Failed(format!("{what}: {text}"))
        }
    };
    let (guest, instance) = pre
        .instantiate_raw(store)
        .await
        .map_err(|e| failed("instantiating", e))?;
    match guest.init(store, config).await {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => return Err(NoSnapshot::InitFailed(format!("init refused: {msg}"))),
        Err(e) => {
            return Err(match failed("init", e) {
                NoSnapshot::Failed(why) => NoSnapshot::InitFailed(why),
                capability => capability,
            });
        }
    }
    let mut access = Access {
        store,
        instance,
        error: None,
    };
    let bytes = Wizer::new()
        .snapshot_component(cx, &mut access)
        .await
        .map_err(|e| failed("snapshot", e))?;
    match access.error {
        Some(e) => Err(failed("reading the state", e)),
        None => Ok(bytes),
    }
}

/// Reads the instrumented instance's state through the exports wizer added. The trait's calls
/// cannot fail, so the first error is kept and the snapshot refused afterwards.
struct Access<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    error: Option<wasmtime::Error>,
}

impl Access<'_> {
    async fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: Lift + Send + Sync + 'static,
    {
        let result = async {
            let missing = || wasmtime::format_err!("no export {instance}#{func}");
            let (_, i) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or_else(missing)?;
            let (_, f) = self
                .instance
                .get_export(&mut *self.store, Some(&i), func)
                .ok_or_else(missing)?;
            let f = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, f)?;
            Ok::<R, wasmtime::Error>(f.call_async(&mut *self.store, ()).await?.0)
        }
        .await;
        match result {
            Ok(r) => Some(r),
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .await
            .map_or(0, f32::to_bits)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .await
            .map_or(0, f64::to_bits)
    }
}
