//! The plugin manifest: what a component says about itself (name, version, contract, hooks,
//! grants, the JSON Schema of its config), carried inside the `.wasm` as a custom section named
//! [`SECTION`] so that a plugin stays one file. The server reads it at load; `wasmtp plugin
//! inspect` prints it.
//!
//! [`manifest!`](crate::manifest!) builds it at compile time: the package fields come from
//! `Cargo.toml` (name, version, description, authors, license), the contract from this SDK, and
//! the rest (hooks, grants, config schema) from a JSON object the author writes, usually a
//! `wasmtp-plugin.json` file next to `Cargo.toml`. No post-build step is needed.

/// The name of the custom section that holds the manifest (JSON, UTF-8).
pub const SECTION: &str = "wasmtp-manifest";

/// The WIT contract this SDK binds, as recorded in every manifest it builds.
pub const CONTRACT: &str = "wasmtp:plugin@0.2.0";

/// Hook names a manifest may list, as in the WIT contract and the server config.
pub const HOOKS: [&str; 9] = [
    "connect",
    "ehlo",
    "mail-from",
    "rcpt",
    "data",
    "deliver",
    "delivered",
    "deferred",
    "bounced",
];

/// Capabilities a manifest may ask for, as in the server config's `grants`.
pub const GRANTS: [&str; 4] = ["kv", "dns", "clock", "http"];

/// Declares the plugin's manifest and embeds it in the component. Call it once, at the crate
/// root, with a JSON object holding `hooks`, `grants`, `config_schema` and `stateless` (each
/// optional; `"stateless": true` is the author's word that the plugin keeps nothing from one
/// transaction to the next in its own memory, so the host may serve many transactions from one
/// warm instance):
///
/// ```
/// wasmtp_plugin_sdk::manifest!(r#"{
///     "hooks": ["data"],
///     "grants": [],
///     "config_schema": {"type": "object", "properties": {"threshold": {"type": "number"}}}
/// }"#);
/// ```
///
/// or, with the object in a file next to `Cargo.toml`:
/// `wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));`
///
/// `name`, `version`, `description`, `authors` and `license` come from the crate's `Cargo.toml`
/// and `contract` from this SDK, so they cannot drift. The macro also adds a unit test
/// (`cargo test` on the native target) that checks the assembled manifest.
#[macro_export]
macro_rules! manifest {
    ($json:expr) => {
        #[doc(hidden)]
        mod __wasmtp_manifest {
            const FIELDS: &[(&str, &str)] = &[
                ("name", env!("CARGO_PKG_NAME")),
                ("version", env!("CARGO_PKG_VERSION")),
                ("description", env!("CARGO_PKG_DESCRIPTION")),
                ("license", env!("CARGO_PKG_LICENSE")),
                ("contract", $crate::manifest::CONTRACT),
            ];
            const AUTHORS: &str = env!("CARGO_PKG_AUTHORS");
            const REST: &str = $json;
            const LEN: usize = $crate::manifest::__assemble(FIELDS, AUTHORS, REST, &mut []);
            /// The manifest as embedded.
            pub(crate) const JSON: [u8; LEN] = $crate::manifest::__build(FIELDS, AUTHORS, REST);

            #[cfg(target_arch = "wasm32")]
            #[unsafe(link_section = "wasmtp-manifest")]
            #[used]
            static SECTION: [u8; LEN] = JSON;

            #[cfg(all(test, not(target_arch = "wasm32")))]
            #[test]
            fn wasmtp_manifest_is_valid() {
                if let Err(e) = $crate::manifest::check(&JSON) {
                    panic!("wasmtp manifest: {e}\n{}", String::from_utf8_lossy(&JSON));
                }
            }
        }
    };
}

/// Checks an assembled manifest the way the server will: valid JSON, an object, known hook and
/// grant names, a `config_schema` that is an object or a boolean.
pub fn check(json: &[u8]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let names = |key: &str, known: &[&str]| -> Result<(), String> {
        let Some(list) = obj.get(key) else {
            return Ok(());
        };
        let list = list
            .as_array()
            .ok_or_else(|| format!("{key}: expected a list"))?;
        for item in list {
            match item.as_str() {
                Some(s) if known.contains(&s) => {}
                _ => return Err(format!("{key}: {item} is not one of {known:?}")),
            }
        }
        Ok(())
    };
    names("hooks", &HOOKS)?;
    names("grants", &GRANTS)?;
    if obj.get("stateless").is_some_and(|v| !v.is_boolean()) {
        return Err("stateless: expected true or false".into());
    }
    match obj.get("config_schema") {
        None | Some(serde_json::Value::Object(_) | serde_json::Value::Bool(_)) => Ok(()),
        Some(_) => Err("config_schema: expected a JSON Schema (an object)".into()),
    }
}

/// Not part of the public API: the manifest `manifest!` assembles, as an array of its length.
#[doc(hidden)]
pub const fn __build<const N: usize>(
    fields: &[(&str, &str)],
    authors: &str,
    rest: &str,
) -> [u8; N] {
    let mut out = [0u8; N];
    __assemble(fields, authors, rest, &mut out);
    out
}

/// Not part of the public API: writes the manifest into `out` (as far as it fits) and returns
/// its full length. `{"field":"value",...,"authors":[...], <the members of rest>}`.
#[doc(hidden)]
pub const fn __assemble(
    fields: &[(&str, &str)],
    authors: &str,
    rest: &str,
    out: &mut [u8],
) -> usize {
    let mut n = put(out, 0, b"{");
    let mut i = 0;
    while i < fields.len() {
        n = put(out, n, b"\"");
        n = put(out, n, fields[i].0.as_bytes());
        n = put(out, n, b"\":\"");
        n = put_escaped(out, n, fields[i].1.as_bytes(), 0, fields[i].1.len());
        n = put(out, n, b"\",");
        i += 1;
    }
    // Cargo joins authors with ':'.
    n = put(out, n, b"\"authors\":[");
    let a = authors.as_bytes();
    let (mut start, mut j, mut first) = (0, 0, true);
    while j <= a.len() {
        if j == a.len() || a[j] == b':' {
            if j > start {
                if !first {
                    n = put(out, n, b",");
                }
                n = put(out, n, b"\"");
                n = put_escaped(out, n, a, start, j);
                n = put(out, n, b"\"");
                first = false;
            }
            start = j + 1;
        }
        j += 1;
    }
    n = put(out, n, b"]");
    let r = rest.as_bytes();
    let open = skip_ws(r, 0);
    if open >= r.len() || r[open] != b'{' {
        panic!("wasmtp_plugin_sdk::manifest!: expected a JSON object");
    }
    if skip_ws(r, open + 1) < r.len() && r[skip_ws(r, open + 1)] == b'}' {
        return put(out, n, b"}");
    }
    n = put(out, n, b",");
    let mut k = open + 1;
    while k < r.len() {
        n = put(out, n, &[r[k]]);
        k += 1;
    }
    n
}

const fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

const fn put(out: &mut [u8], mut n: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        if n < out.len() {
            out[n] = bytes[i];
        }
        n += 1;
        i += 1;
    }
    n
}

/// `s[from..to]` as the inside of a JSON string.
const fn put_escaped(out: &mut [u8], mut n: usize, s: &[u8], from: usize, to: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = from;
    while i < to {
        let b = s[i];
        n = match b {
            b'"' => put(out, n, b"\\\""),
            b'\\' => put(out, n, b"\\\\"),
            0..0x20 => put(
                out,
                n,
                &[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 15) as usize],
                ],
            ),
            _ => put(out, n, &[b]),
        };
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(fields: &[(&str, &str)], authors: &str, rest: &str) -> serde_json::Value {
        let len = __assemble(fields, authors, rest, &mut []);
        let mut out = vec![0u8; len];
        assert_eq!(__assemble(fields, authors, rest, &mut out), len);
        check(&out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn package_fields_are_escaped_and_merged() {
        let v = assemble(
            &[("name", "x"), ("description", "say \"hi\"\\\n")],
            "A <a@b>:B",
            " {\"hooks\": [\"data\"], \"grants\": [\"kv\"]}\n",
        );
        assert_eq!(v["name"], "x");
        assert_eq!(v["description"], "say \"hi\"\\\n");
        assert_eq!(v["authors"], serde_json::json!(["A <a@b>", "B"]));
        assert_eq!(v["hooks"], serde_json::json!(["data"]));
        assert_eq!(v["grants"], serde_json::json!(["kv"]));
    }

    #[test]
    fn an_empty_object_and_no_authors() {
        let v = assemble(&[("name", "x")], "", "{ }");
        assert_eq!(v, serde_json::json!({"name": "x", "authors": []}));
    }

    #[test]
    fn check_names_what_is_wrong() {
        assert!(
            check(br#"{"hooks": ["mail"]}"#)
                .unwrap_err()
                .contains("hooks")
        );
        assert!(
            check(br#"{"grants": ["net"]}"#)
                .unwrap_err()
                .contains("grants")
        );
        assert!(
            check(br#"{"config_schema": 3}"#)
                .unwrap_err()
                .contains("config_schema")
        );
        assert!(
            check(br#"{"stateless": "yes"}"#)
                .unwrap_err()
                .contains("stateless")
        );
        assert!(check(br#"{"stateless": true}"#).is_ok());
        assert!(check(b"[]").is_err());
    }
}
