//! What `wasmtp plugin inspect` reports about a component, read without compiling it: size,
//! sha256, manifest, contract, imports (and the grant each needs, by the same rule the loader
//! applies), exports, custom sections, signatures.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::manifest::{self, CustomSection, Manifest};
use super::{ImportNeed, builtin, import_need};

/// One import and what it takes from the host.
#[derive(Debug, Serialize)]
pub struct Import {
    /// The instance name, e.g. `wasmtp:plugin/kv@0.1.0`.
    pub name: String,
    /// `always`, `grant`, `stub` (WASI for panic output) or `unavailable`.
    pub provided: &'static str,
    /// The grant it needs, for `grant`.
    pub grant: Option<&'static str>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// The file (or `builtin:NAME`).
    pub file: String,
    /// Size in bytes.
    pub size: usize,
    /// sha256 of the file, as `sha256` pins take it.
    pub sha256: String,
    /// The embedded manifest, if any.
    pub manifest: Option<Manifest>,
    /// Why the manifest section could not be read, if it could not.
    pub manifest_error: Option<String>,
    /// The contract the component exports its hooks for (from its exports, e.g.
    /// `wasmtp:plugin@0.1.0`), whatever the manifest says.
    pub contract: Option<String>,
    /// Top-level imports.
    pub imports: Vec<Import>,
    /// Top-level exports.
    pub exports: Vec<String>,
    /// Every custom section, at any depth.
    pub custom_sections: Vec<CustomSection>,
    /// Signatures carried by the component. None until the signing module fills this in; it
    /// reads its own custom section from the same bytes (see [`signatures`]).
    pub signatures: Option<serde_json::Value>,
}

/// Inspects a plugin file or `builtin:NAME`.
pub fn inspect(path: &Path) -> Result<Inspection, String> {
    let bytes = builtin::read(path)?;
    inspect_bytes(&path.display().to_string(), &bytes)
}

/// Inspects component bytes; `file` is only reported.
pub fn inspect_bytes(file: &str, bytes: &[u8]) -> Result<Inspection, String> {
    if !wasmparser::Parser::is_component(bytes) {
        return Err("not a WebAssembly component".into());
    }
    let (imports, exports) = top_level_names(bytes)?;
    let (custom_sections, _) = manifest::custom_sections(bytes, manifest::SECTION)?;
    let (manifest, manifest_error) = match manifest::read(bytes) {
        Ok(m) => (m, None),
        Err(e) => (None, Some(e)),
    };
    let contract = exports.iter().find_map(|e| {
        let (pkg, version) = e.split_once('@')?;
        (pkg == "wasmtp:plugin/hooks").then(|| format!("wasmtp:plugin@{version}"))
    });
    let imports = imports
        .into_iter()
        .map(|name| {
            let (provided, grant) = match import_need(&name) {
                ImportNeed::Always => ("always", None),
                ImportNeed::Grant(g) => ("grant", Some(g.as_str())),
                ImportNeed::Stub => ("stub", None),
                ImportNeed::Unavailable => ("unavailable", None),
            };
            Import {
                name,
                provided,
                grant,
            }
        })
        .collect();
    Ok(Inspection {
        file: file.to_string(),
        size: bytes.len(),
        sha256: super::digest(bytes),
        manifest,
        manifest_error,
        contract,
        imports,
        exports,
        custom_sections,
        signatures: signatures(bytes),
    })
}

/// The signatures a component carries, for the report. The signing module replaces this body;
/// until then components are reported unsigned.
pub fn signatures(bytes: &[u8]) -> Option<serde_json::Value> {
    let found = super::sign::signatures(bytes).ok()?;
    if found.is_empty() {
        return None;
    }
    Some(serde_json::Value::Array(
        found
            .iter()
            .map(|f| {
                serde_json::json!({
                    "key": f.signer(),
                    "valid": f.problem.is_none(),
                    "problem": f.problem,
                })
            })
            .collect(),
    ))
}

/// The names of the component's own (top-level) imports and exports.
pub(crate) fn top_level_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("not a valid component: {e}"))? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(r) if depth == 1 => {
                for i in r {
                    imports.push(i.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            wasmparser::Payload::ComponentExportSection(r) if depth == 1 => {
                for e in r {
                    exports.push(e.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

impl Inspection {
    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "file:      {}", self.file);
        let _ = writeln!(s, "size:      {} bytes", self.size);
        let _ = writeln!(s, "sha256:    {}", self.sha256);
        let _ = writeln!(
            s,
            "contract:  {}",
            match self.contract.as_deref() {
                None => "none (it does not export wasmtp:plugin/hooks)".to_string(),
                Some(c) if super::contract::Contract::of_name(c).is_some() =>
                    format!("{c} (served)"),
                Some(c) => format!(
                    "{c} (not served: this server serves {})",
                    super::contract::served_list()
                ),
            }
        );
        match (&self.manifest, &self.manifest_error) {
            (Some(m), _) => {
                let _ = writeln!(s, "manifest:");
                let _ = writeln!(s, "  name:        {} {}", m.name, m.version);
                if !m.description.is_empty() {
                    let _ = writeln!(s, "  description: {}", m.description);
                }
                if !m.authors.is_empty() {
                    let _ = writeln!(s, "  authors:     {}", m.authors.join(", "));
                }
                if !m.license.is_empty() {
                    let _ = writeln!(s, "  license:     {}", m.license);
                }
                let _ = writeln!(s, "  contract:    {}", m.contract);
                let hooks = m.hooks.as_ref().map_or("all".to_string(), |h| h.join(", "));
                let _ = writeln!(s, "  hooks:       {hooks}");
                let grants = if m.grants.is_empty() {
                    "none".to_string()
                } else {
                    m.grants.join(", ")
                };
                let _ = writeln!(s, "  grants:      {grants}");
                if m.stateless {
                    let _ = writeln!(
                        s,
                        "  stateless:   yes (warm instances serve many transactions unless the config sets reuse)"
                    );
                }
                if let Some(schema) = &m.config_schema {
                    let keys: Vec<&str> = schema["properties"]
                        .as_object()
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let _ = writeln!(s, "  config keys: {}", keys.join(", "));
                }
            }
            (None, Some(e)) => {
                let _ = writeln!(s, "manifest:  unreadable: {e}");
            }
            (None, None) => {
                let _ = writeln!(s, "manifest:  none");
            }
        }
        let _ = writeln!(s, "imports:");
        for i in &self.imports {
            let how = match (i.provided, i.grant) {
                (_, Some(g)) => format!("needs grant {g}"),
                ("always", _) => "always provided".into(),
                ("stub", _) => "WASI for panic output (empty environment, captured stderr)".into(),
                _ => "not provided: the plugin would be refused".into(),
            };
            let _ = writeln!(s, "  {:<40} {how}", i.name);
        }
        let _ = writeln!(s, "exports:");
        for e in &self.exports {
            let _ = writeln!(s, "  {e}");
        }
        let _ = writeln!(s, "custom sections:");
        for c in &self.custom_sections {
            let at = if c.top_level {
                ""
            } else {
                " (in a core module)"
            };
            let _ = writeln!(s, "  {:<24} {} bytes{at}", c.name, c.size);
        }
        let _ = writeln!(
            s,
            "signatures: {}",
            self.signatures
                .as_ref()
                .map_or("none".to_string(), |v| v.to_string())
        );
        s
    }
}
