//! Per-instance resource limits: what one plugin instance may allocate in
//! its store, and the per-plugin log budget.
//!
//! wasmtime's `StoreLimits` caps each linear memory and each table on its
//! own, so a component with several memories (or a huge `table.grow`) could
//! hold many times the configured `memory`. [`InstanceLimits`] keeps the
//! `StoreLimits` counts (memories, tables, instances, table elements) and
//! adds one budget for the whole store: every byte of every memory and
//! every table slot counts against the plugin's `memory` key.

use std::sync::Arc;

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use crate::observe::limit_hit;

/// Linear memories per store. Rust and C guests have one; a componentize-py
/// component links a handful of libraries that share one memory.
pub const MAX_MEMORIES: usize = 8;
/// Tables per store (wit-component shims add a few beside the guest's own).
pub const MAX_TABLES: usize = 64;
/// Core instances per store (a Python component has ~40 core modules).
pub const MAX_INSTANCES: usize = 64;
/// Elements per table. CPython's function table has ~20 000 entries.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// What one table slot costs the host (a pointer and a type word, rounded
/// up), counted against the memory budget.
const TABLE_ELEMENT_BYTES: usize = 16;

/// The resource limiter of one plugin instance's store.
pub struct InstanceLimits {
    plugin: Arc<str>,
    counts: StoreLimits,
    budget: usize,
    used: usize,
}

impl InstanceLimits {
    /// Limits for an instance of `plugin` whose memories and tables together
    /// may hold `budget` bytes.
    pub fn new(plugin: Arc<str>, budget: u64) -> InstanceLimits {
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        InstanceLimits {
            plugin,
            counts: StoreLimitsBuilder::new()
                .memory_size(budget)
                .table_elements(MAX_TABLE_ELEMENTS)
                .memories(MAX_MEMORIES)
                .tables(MAX_TABLES)
                .instances(MAX_INSTANCES)
                .trap_on_grow_failure(true)
                .build(),
            budget,
            used: 0,
        }
    }

    /// Bytes of memory and table this store holds now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Checks that `grow` more bytes fit the budget, or reports the limit
    /// and fails (a trap in the guest: a plugin that asks for too much is
    /// broken).
    fn check(&self, what: &str, grow: usize) -> wasmtime::Result<()> {
        if self.used.saturating_add(grow) > self.budget {
            limit_hit(
                "plugin.memory",
                &format!(
                    "plugin {} asked for {grow} more bytes of {what} with {} of {} in use",
                    self.plugin, self.used, self.budget
                ),
            );
            wasmtime::bail!(
                "plugin {} is over its memory cap of {} bytes (key plugin.memory)",
                self.plugin,
                self.budget
            );
        }
        Ok(())
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        self.check("memory", grow)?;
        let ok = self.counts.memory_growing(current, desired, maximum)?;
        if ok {
            self.used += grow;
        }
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.counts.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            limit_hit(
                "plugin.memory",
                &format!(
                    "plugin {} asked for a table of {desired} elements (at most {MAX_TABLE_ELEMENTS})",
                    self.plugin
                ),
            );
        }
        let grow = desired
            .saturating_sub(current)
            .saturating_mul(TABLE_ELEMENT_BYTES);
        self.check("table", grow)?;
        let ok = self.counts.table_growing(current, desired, maximum)?;
        if ok {
            self.used += grow;
        }
        Ok(ok)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.counts.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.counts.instances()
    }

    fn tables(&self) -> usize {
        self.counts.tables()
    }

    fn memories(&self) -> usize {
        self.counts.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Instance, Module, Store};

    /// A core module with `n` memories of `pages` 64 KiB pages each and one
    /// table of `elements` funcrefs, hand-encoded (no `wat` in this build).
    fn module(n: u8, pages: u8, elements: u32) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        let mut table = vec![1, 0x70, 0];
        leb(&mut table, elements);
        m.push(4);
        leb(&mut m, table.len() as u32);
        m.extend(table);
        let mut mem = vec![n];
        for _ in 0..n {
            mem.extend([0, pages]);
        }
        m.push(5);
        leb(&mut m, mem.len() as u32);
        m.extend(mem);
        m
    }

    fn leb(out: &mut Vec<u8>, mut v: u32) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn instantiate(wasm: &[u8], budget: u64) -> Result<usize, String> {
        let engine = Engine::default();
        let module = Module::new(&engine, wasm).map_err(|e| format!("{e:#}"))?;
        let mut store = Store::new(&engine, InstanceLimits::new("t".into(), budget));
        store.limiter(|l| l);
        Instance::new(&mut store, &module, &[])
            .map(|_| store.data().used())
            .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn the_cap_bounds_all_memories_together() {
        // Two memories of 4 pages each fit a 4-page cap one by one, not together.
        let page = 64 * 1024;
        assert_eq!(
            instantiate(&module(1, 4, 0), 4 * page),
            Ok(4 * page as usize)
        );
        let e = instantiate(&module(2, 4, 0), 4 * page).unwrap_err();
        assert!(e.contains("memory cap"), "{e}");
        assert!(instantiate(&module(2, 4, 0), 8 * page).is_ok());
        // More memories than MAX_MEMORIES are refused whatever their size.
        assert!(instantiate(&module(MAX_MEMORIES as u8 + 1, 0, 0), 1 << 30).is_err());
    }

    #[test]
    fn tables_count_against_the_cap() {
        let e = instantiate(&module(0, 0, MAX_TABLE_ELEMENTS as u32 + 1), 1 << 40).unwrap_err();
        assert!(e.contains("table"), "{e}");
        // 100 000 slots cost 1.6 MB: over a 1 MiB cap.
        let e = instantiate(&module(0, 0, 100_000), 1 << 20).unwrap_err();
        assert!(e.contains("memory cap"), "{e}");
        assert!(instantiate(&module(0, 0, 1000), 1 << 20).is_ok());
    }
}
