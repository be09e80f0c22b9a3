//! Sharing plugins through OCI registries, the way wkg and Spin distribute
//! components: one `application/wasm` layer (the component file as is,
//! signatures included) and an `application/vnd.wasm.config.v0+json`
//! config, per the CNCF wasm OCI artifact format. The client is oci-client
//! over rustls.
//!
//! A `[[plugin]]` with `oci = "REF"` and `sha256 = "..."` is pulled once,
//! at load, into `<data_dir>/plugins/<sha256>.wasm`; later loads use that
//! file as long as its digest matches the pin, so a moved tag or a down
//! registry never changes what runs. Registries on loopback are spoken to
//! over plain HTTP (as Docker does); any other over HTTPS.

use std::path::Path;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;
use wasmparser::{Chunk, Parser, Payload};

use super::PluginError;
use crate::config::PluginSpec;

/// Media type of the layer that holds the component.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Media type of the config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";

/// Whole push or pull, connection and transfer together.
const DEADLINE: Duration = Duration::from_secs(120);

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Not an OCI reference.
    #[error("{reference:?} is not an OCI reference (registry/repository:tag): {detail}")]
    Reference {
        /// What was given.
        reference: String,
        /// Parser message.
        detail: String,
    },
    /// The registry refused or could not be reached.
    #[error("registry: {0}")]
    Registry(String),
    /// What the registry sent is not one wasm component.
    #[error("{0}")]
    Content(String),
}

/// A pushed plugin.
#[derive(Debug)]
pub struct Pushed {
    /// `sha256:...` of the manifest (what `REF@digest` names).
    pub manifest_digest: String,
    /// sha256 (hex) of the component file, for `sha256` pins.
    pub sha256: String,
}

/// A pulled plugin.
#[derive(Debug)]
pub struct Pulled {
    /// The component file.
    pub bytes: Vec<u8>,
    /// `sha256:...` of the manifest.
    pub manifest_digest: String,
    /// sha256 (hex) of the component file, for `sha256` pins.
    pub sha256: String,
}

/// Parses `registry/repository:tag` (or `@sha256:...`).
pub fn parse_reference(reference: &str) -> Result<Reference, OciError> {
    reference
        .parse()
        .map_err(|e: oci_client::ParseError| OciError::Reference {
            reference: reference.into(),
            detail: e.to_string(),
        })
}

fn client(reference: &Reference, insecure: bool) -> Result<Client, OciError> {
    // rustls is built with ring only (no aws-lc); reqwest takes the process
    // default. Installing it again is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.resolve_registry();
    let protocol = if insecure || is_loopback(registry) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    })
    .map_err(|e| OciError::Registry(e.to_string()))
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn deadline<T>(
    f: impl std::future::Future<Output = Result<T, OciError>>,
) -> Result<T, OciError> {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| Err(OciError::Registry(format!("no answer within {DEADLINE:?}"))))
}

/// Pushes a component file as `reference`.
pub async fn push(bytes: Vec<u8>, reference: &str, insecure: bool) -> Result<Pushed, OciError> {
    let reference = parse_reference(reference)?;
    let client = client(&reference, insecure)?;
    let sha256 = super::hex(&Sha256::digest(&bytes));
    let config = Config {
        data: serde_json::to_vec(&wasm_config(&bytes, &sha256)?)
            .expect("config serializes")
            .into(),
        media_type: CONFIG_MEDIA_TYPE.into(),
        annotations: None,
    };
    let layer = ImageLayer::new(bytes, LAYER_MEDIA_TYPE.into(), None);
    let reg = |e: oci_client::errors::OciDistributionError| OciError::Registry(e.to_string());
    deadline(async {
        client
            .push(&reference, &[layer], config, &RegistryAuth::Anonymous, None)
            .await
            .map_err(reg)?;
        let manifest_digest = client
            .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
            .await
            .map_err(reg)?;
        Ok(Pushed {
            manifest_digest,
            sha256,
        })
    })
    .await
}

/// Pulls the component `reference` names; the layer's digest is checked.
pub async fn pull(reference: &str, insecure: bool) -> Result<Pulled, OciError> {
    let reference = parse_reference(reference)?;
    let client = client(&reference, insecure)?;
    let image = deadline(async {
        client
            .pull(&reference, &RegistryAuth::Anonymous, vec![LAYER_MEDIA_TYPE])
            .await
            .map_err(|e| OciError::Registry(e.to_string()))
    })
    .await?;
    let [layer] = &image.layers[..] else {
        return Err(OciError::Content(format!(
            "expected one {LAYER_MEDIA_TYPE} layer, found {}",
            image.layers.len()
        )));
    };
    let bytes = layer.data.to_vec();
    let sha256 = super::hex(&Sha256::digest(&bytes));
    let listed = image
        .manifest
        .as_ref()
        .and_then(|m| m.layers.first())
        .map(|d| d.digest.clone());
    if listed.as_deref() != Some(format!("sha256:{sha256}").as_str()) {
        return Err(OciError::Content(format!(
            "the layer's sha256 is {sha256}, but the manifest lists {listed:?}"
        )));
    }
    Ok(Pulled {
        bytes,
        manifest_digest: image.digest.unwrap_or_default(),
        sha256,
    })
}

/// The config blob of the CNCF wasm OCI artifact format.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig {
    created: String,
    architecture: &'static str,
    os: &'static str,
    layer_digests: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<ComponentInfo>,
}

#[derive(Serialize)]
struct ComponentInfo {
    exports: Vec<String>,
    imports: Vec<String>,
    target: Option<String>,
}

fn wasm_config(bytes: &[u8], sha256: &str) -> Result<WasmConfig, OciError> {
    let component = component_info(bytes)?;
    Ok(WasmConfig {
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        architecture: "wasm",
        os: if component.is_some() {
            "wasip2"
        } else {
            "wasip1"
        },
        layer_digests: vec![format!("sha256:{sha256}")],
        component,
    })
}

/// The top-level import and export names of a component; None for a core
/// module.
fn component_info(bytes: &[u8]) -> Result<Option<ComponentInfo>, OciError> {
    let bad = |e: wasmparser::BinaryReaderError| {
        OciError::Content(format!("not a WebAssembly component: {}", e.message()))
    };
    let mut parser = Parser::new(0);
    let mut offset = 0;
    let mut info = ComponentInfo {
        exports: Vec::new(),
        imports: Vec::new(),
        target: None,
    };
    loop {
        let Chunk::Parsed { consumed, payload } =
            parser.parse(&bytes[offset..], true).map_err(bad)?
        else {
            return Err(OciError::Content("truncated component".into()));
        };
        offset += consumed;
        match payload {
            Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Component => {
                return Ok(None);
            }
            Payload::ModuleSection {
                unchecked_range, ..
            }
            | Payload::ComponentSection {
                unchecked_range, ..
            } => offset = unchecked_range.end.min(bytes.len()),
            Payload::ComponentImportSection(s) => {
                for i in s {
                    info.imports.push(i.map_err(bad)?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(s) => {
                for e in s {
                    info.exports.push(e.map_err(bad)?.name.name.to_string());
                }
            }
            Payload::End(_) => return Ok(Some(info)),
            _ => {}
        }
    }
}

/// Makes sure `spec.path` holds the pinned component `reference` names,
/// pulling it once if it does not. Runs on its own thread with its own
/// small runtime, so it works from `check-config`, at start and at reload.
pub fn ensure_pulled(spec: &PluginSpec, reference: &str) -> Result<(), PluginError> {
    let failed = |detail: String| PluginError::Pull {
        name: spec.name.clone(),
        reference: reference.into(),
        detail,
    };
    let pin = spec.sha256.as_deref().unwrap_or_default();
    if super::file_digest(&spec.path).is_ok_and(|d| d == pin) {
        return Ok(());
    }
    let pull = || -> Result<Pulled, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("could not run: {e}"))?
            .block_on(pull(reference, false))
            .map_err(|e| e.to_string())
    };
    let pulled = std::thread::scope(|s| {
        s.spawn(pull)
            .join()
            .unwrap_or_else(|_| Err("panicked in the host".into()))
    })
    .map_err(failed)?;
    if pulled.sha256 != pin {
        return Err(failed(format!(
            "it has sha256 {}, but the config pins {pin} (key plugin.sha256)",
            pulled.sha256
        )));
    }
    store(&spec.path, &pulled.bytes)
        .map_err(|e| failed(format!("cannot write {}: {e}", spec.path.display())))?;
    info!(plugin = %spec.name, reference, manifest = %pulled.manifest_digest, path = %spec.path.display(), "plugin pulled");
    Ok(())
}

/// Writes the file whole or not at all (temporary file, fsync, rename).
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        for r in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["ghcr.io", "10.0.0.1:5000", "registry.local:5000"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
