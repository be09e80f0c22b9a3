//! The plugin manifest: what a component says about itself, carried inside it as a custom
//! section named `wasmtp-manifest` (JSON), so that a plugin is one file.
//!
//! The Rust SDK's `manifest!` macro puts the section into the guest's core module at compile
//! time; other toolchains add it afterwards at the component's top level with `wasmtp plugin
//! embed-manifest`. The host reads either (the top level wins) and at load: refuses a manifest
//! for another contract, refuses a plugin whose manifest needs a grant its config lacks (naming
//! the key to add), validates `[plugin.config]` against the manifest's JSON Schema (naming the
//! bad key), and takes the manifest's hooks when the config lists none. A component without a
//! manifest still loads: the contract is the WIT world; the manifest adds checks and defaults.

use serde::{Deserialize, Serialize};

use crate::config::{Grant, HookName, PluginSpec};

/// The custom section's name.
pub const SECTION: &str = "wasmtp-manifest";

/// The current contract version (the host serves the older ones in `contract::SERVED` too).
pub const CONTRACT: &str = "wasmtp:plugin@0.2.0";

/// The manifest as the section holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's own name (a config may load it under another).
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// One line on what it does.
    #[serde(default)]
    pub description: String,
    /// Who wrote it.
    #[serde(default)]
    pub authors: Vec<String>,
    /// SPDX license expression.
    #[serde(default)]
    pub license: String,
    /// The WIT package it was built against, e.g. `wasmtp:plugin@0.1.0`.
    pub contract: String,
    /// Hooks it implements (the config's `hooks` default); none: every hook.
    #[serde(default)]
    pub hooks: Option<Vec<String>>,
    /// Capabilities it needs granted.
    #[serde(default)]
    pub grants: Vec<String>,
    /// JSON Schema of its `[plugin.config]` table.
    #[serde(default)]
    pub config_schema: Option<serde_json::Value>,
    /// The author's word that the plugin keeps nothing from one transaction
    /// to the next in its own memory (its verdicts depend on the call, its
    /// config and host state such as kv or notes only): the host may then
    /// serve several transactions, of any sessions, from one warm instance
    /// (`plugin_limits.stateless_reuse` of them, unless the plugin's config
    /// sets `reuse`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateless: bool,
}

/// A custom section found in a component.
#[derive(Debug, Clone, Serialize)]
pub struct CustomSection {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: usize,
    /// True at the component's top level, false inside a nested (core) module.
    pub top_level: bool,
}

/// Every custom section, and the contents of those asked for as (top level?, bytes).
pub type Sections = (Vec<CustomSection>, Vec<(bool, Vec<u8>)>);

/// Every custom section of a component (or module), with the contents of those named `want`.
pub fn custom_sections(bytes: &[u8], want: &str) -> Result<Sections, String> {
    let mut found = Vec::new();
    let mut wanted = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("not a WebAssembly binary: {e}"))? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::CustomSection(c) => {
                let top_level = depth == 1;
                if c.name() == want {
                    wanted.push((top_level, c.data().to_vec()));
                }
                found.push(CustomSection {
                    name: c.name().to_string(),
                    size: c.data().len(),
                    top_level,
                });
            }
            _ => {}
        }
    }
    Ok((found, wanted))
}

/// The manifest of a component: the top-level section if there is one, else the first one in a
/// nested module; None if it carries none.
pub fn read(bytes: &[u8]) -> Result<Option<Manifest>, String> {
    let (_, mut sections) = custom_sections(bytes, SECTION)?;
    sections.sort_by_key(|(top, _)| !*top);
    match sections.first() {
        None => Ok(None),
        Some((_, data)) => parse(data).map(Some),
    }
}

/// Parses and checks a manifest's JSON (names of hooks and grants are checked at load, where a
/// message can say what to do).
pub fn parse(json: &[u8]) -> Result<Manifest, String> {
    let m: Manifest = serde_json::from_slice(json)
        .map_err(|e| format!("the {SECTION} section is not a valid manifest: {e}"))?;
    if let Some(schema) = &m.config_schema {
        jsonschema::validator_for(schema)
            .map_err(|e| format!("its config_schema is not a valid JSON Schema: {e}"))?;
    }
    Ok(m)
}

/// A component with `json` as its top-level manifest section (replacing one it had). The JSON
/// is checked first, so a broken manifest never gets embedded.
pub fn embed(component: &[u8], json: &[u8]) -> Result<Vec<u8>, String> {
    parse(json)?;
    if !wasmparser::Parser::is_component(component) {
        return Err("not a WebAssembly component (a core module? build a component)".into());
    }
    let mut out = wasm_encoder::Component::new();
    for (id, data) in top_level_sections(component)? {
        if id == 0 && custom_name(data) == Some(SECTION) {
            continue;
        }
        out.section(&wasm_encoder::RawSection { id, data });
    }
    out.section(&wasm_encoder::CustomSection {
        name: SECTION.into(),
        data: json.into(),
    });
    let bytes = out.finish();
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&bytes)
        .map_err(|e| format!("the result does not validate: {e}"))?;
    Ok(bytes)
}

/// The top-level sections of a component as (id, contents); the binary format is a header and
/// then `id, size, contents` triples, whatever the section holds.
fn top_level_sections(bytes: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
    let mut sections = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let id = bytes[at];
        let (size, len) = leb_u32(&bytes[at + 1..]).ok_or("a section header is cut off")?;
        let start = at + 1 + len;
        let end = start
            .checked_add(size as usize)
            .filter(|&e| e <= bytes.len())
            .ok_or("a section runs past the end of the file")?;
        sections.push((id, &bytes[start..end]));
        at = end;
    }
    Ok(sections)
}

fn custom_name(data: &[u8]) -> Option<&str> {
    let (len, n) = leb_u32(data)?;
    std::str::from_utf8(data.get(n..n + len as usize)?).ok()
}

fn leb_u32(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, b) in bytes.iter().take(5).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// What the manifest changes about a configured plugin, or why it cannot load.
pub(crate) enum Refusal {
    /// The manifest targets another contract, or lists something this host does not know.
    Manifest(String),
    /// It needs a grant the config does not give.
    Grant(Grant),
    /// The config does not fit the schema: the key (dotted, under `plugin.config`) and why.
    Config(String, String),
}

impl Manifest {
    /// Applies the manifest to `spec`: the hooks default, the grant check, the config check.
    pub(crate) fn apply(&self, spec: &mut PluginSpec, stateless_reuse: u32) -> Result<(), Refusal> {
        if super::contract::Contract::of_name(&self.contract).is_none() {
            return Err(Refusal::Manifest(format!(
                "it was built for {}, and this server serves {}",
                self.contract,
                super::contract::served_list()
            )));
        }
        for g in &self.grants {
            let grant = Grant::ALL
                .into_iter()
                .find(|k| k.as_str() == g)
                .ok_or_else(|| {
                    Refusal::Manifest(format!(
                        "its manifest asks for the grant {g:?}, which this server does not have"
                    ))
                })?;
            if !spec.grants.contains(&grant) {
                return Err(Refusal::Grant(grant));
            }
        }
        if let Some(hooks) = &self.hooks {
            let mut wanted = Vec::new();
            for h in hooks {
                let hook = HookName::ALL
                    .into_iter()
                    .find(|k| k.as_str() == h)
                    .ok_or_else(|| {
                        Refusal::Manifest(format!(
                            "its manifest lists the hook {h:?}, which the contract does not have"
                        ))
                    })?;
                wanted.push(hook);
            }
            if !spec.hooks_configured {
                spec.hooks = wanted;
            }
        }
        if let Some(schema) = &self.config_schema {
            check_config(schema, &spec.config_json)?;
        }
        if self.stateless && !spec.reuse_configured {
            spec.reuse = stateless_reuse;
        }
        Ok(())
    }
}

/// Validates the config (as JSON) against the schema; the first error names its key.
fn check_config(schema: &serde_json::Value, config_json: &str) -> Result<(), Refusal> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        Refusal::Manifest(format!("its config_schema is not a valid JSON Schema: {e}"))
    })?;
    let config: serde_json::Value =
        serde_json::from_str(config_json).expect("config_json is JSON the host made");
    let Some(e) = validator.iter_errors(&config).next() else {
        return Ok(());
    };
    let mut key: Vec<String> = e
        .instance_path()
        .as_str()
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    match e.kind() {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            key.push(property.as_str().unwrap_or_default().to_string())
        }
        jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
            key.extend(unexpected.first().cloned())
        }
        _ => {}
    }
    let mut dotted = String::from("plugin.config");
    for k in key {
        dotted.push('.');
        dotted.push_str(&k);
    }
    Err(Refusal::Config(dotted, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    #[test]
    fn embed_replaces_and_read_finds_it() {
        let m1 = br#"{"name":"a","contract":"wasmtp:plugin@0.1.0","hooks":["data"]}"#;
        let m2 = br#"{"name":"b","contract":"wasmtp:plugin@0.1.0"}"#;
        let once = embed(COMPONENT, m1).unwrap();
        assert_eq!(read(&once).unwrap().unwrap().name, "a");
        let twice = embed(&once, m2).unwrap();
        assert_eq!(read(&twice).unwrap().unwrap().name, "b");
        let (sections, _) = custom_sections(&twice, SECTION).unwrap();
        assert_eq!(sections.len(), 1, "{sections:?}");
        assert_eq!(read(COMPONENT).unwrap(), None);
    }

    #[test]
    fn a_broken_manifest_is_not_embedded() {
        assert!(
            embed(COMPONENT, b"{")
                .unwrap_err()
                .contains("not a valid manifest")
        );
        let bad_schema = br#"{"name":"a","contract":"c","config_schema":{"type":"nope"}}"#;
        assert!(
            embed(COMPONENT, bad_schema)
                .unwrap_err()
                .contains("config_schema")
        );
        let core = b"\0asm\x01\x00\x00\x00";
        let ok = br#"{"name":"a","contract":"c"}"#;
        assert!(
            embed(core, ok)
                .unwrap_err()
                .contains("not a WebAssembly component")
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let schema = serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["domains"],
            "properties": {
                "domains": {"type": "array", "items": {"type": "string"}},
                "limit": {"type": "integer"}
            }
        });
        let key = |cfg: &str| match check_config(&schema, cfg) {
            Err(Refusal::Config(k, _)) => k,
            Ok(()) => "ok".into(),
            Err(_) => "other".into(),
        };
        assert_eq!(key(r#"{"domains":[]}"#), "ok");
        assert_eq!(key(r#"{}"#), "plugin.config.domains");
        assert_eq!(key(r#"{"domains":[1]}"#), "plugin.config.domains.0");
        assert_eq!(key(r#"{"domains":[],"limit":"x"}"#), "plugin.config.limit");
        assert_eq!(key(r#"{"domains":[],"limt":1}"#), "plugin.config.limt");
    }
}
