//! Plugin signatures: the keys, the signature sections, and the trust check
//! at load (`[plugin_trust]`).
//!
//! A signature is Ed25519 (ed25519-dalek) over
//! `CONTEXT || sha256(the file without its signature sections)`, carried in
//! a `wasmtp-signature` custom section of the component itself, so a signed
//! plugin stays one file. Every signer appends one section; removing all of
//! them gives back the bytes each signer signed, so signatures coexist in any
//! order. Sections are found with wasmparser and written with wasm-encoder.
//!
//! Keys are PEM files that openssl also reads: a PKCS#8 secret key (mode
//! 0600) and an SPKI public key (`NAME.pub`). The section carries the
//! signer's public key, so a signature can be checked without knowing who
//! made it; only `trusted_keys` say whose signature counts.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmparser::{Chunk, Parser, Payload};

use super::PluginError;
use crate::config::PluginSpec;

/// Name of the custom section that holds one signature.
pub const SECTION: &str = "wasmtp-signature";

/// Domain separation: these signatures cannot be replayed as any other
/// Ed25519-signed message, and a new payload format gets a new context.
const CONTEXT: &[u8] = b"wasmtp-plugin-signature-v1\0";

/// Why keys, signing or verifying failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A key file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error (not a `source`: the message already shows it).
        error: std::io::Error,
    },
    /// A key file is not what it should be.
    #[error("{}: not an Ed25519 {kind} key in PEM ({detail})", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// "secret" or "public".
        kind: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// The bytes are not a WebAssembly binary.
    #[error("not a WebAssembly component: {0}")]
    Parse(String),
}

// ---------------------------------------------------------------- keys

/// A short, stable name for a public key: `ed25519:` and the first 16 hex
/// digits of the sha256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    format!(
        "ed25519:{}",
        &super::hex(&Sha256::digest(key.as_bytes()))[..16]
    )
}

/// Writes a new key pair: the secret key to `secret` (created exclusively,
/// mode 0600) and the public key to `secret` + `.pub`. Returns the public
/// key's path.
pub fn keygen(secret: &Path) -> Result<PathBuf, SignError> {
    let mut seed = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut seed).map_err(|e| {
        SignError::Io {
            path: secret.into(),
            error: std::io::Error::other(e),
        }
    })?;
    let key = SigningKey::from_bytes(&seed);
    let public = public_path(secret);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| SignError::Io { path, error }
    };
    let key_err = |path: &Path, kind, e: &dyn std::fmt::Display| SignError::Key {
        path: path.into(),
        kind,
        detail: e.to_string(),
    };
    // PKCS#8 v1 (without the public key): OpenSSL 3.0 reads only that.
    let secret_pem = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| key_err(secret, "secret", &e))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| key_err(&public, "public", &e))?;
    // The public key first: if it exists, nothing is written at all.
    write_new(&public, public_pem.as_bytes(), 0o644).map_err(io(&public))?;
    if let Err(e) = write_new(secret, secret_pem.as_bytes(), 0o600) {
        let _ = std::fs::remove_file(&public);
        return Err(io(secret)(e));
    }
    Ok(public)
}

fn public_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Reads a secret key written by [`keygen`] (or `openssl genpkey -algorithm ed25519`).
pub fn read_secret_key(path: &Path) -> Result<SigningKey, SignError> {
    read_pem(path, "secret", SigningKey::from_pkcs8_pem)
}

/// Reads a public key (`NAME.pub`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SignError> {
    read_pem(path, "public", VerifyingKey::from_public_key_pem)
}

fn read_pem<T, E: std::fmt::Display>(
    path: &Path,
    kind: &'static str,
    decode: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, SignError> {
    let pem = std::fs::read_to_string(path).map_err(|error| SignError::Io {
        path: path.into(),
        error,
    })?;
    decode(&pem).map_err(|e| SignError::Key {
        path: path.into(),
        kind,
        detail: e.to_string(),
    })
}

// ---------------------------------------------------------------- sections

/// The content of one `wasmtp-signature` section.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionBody {
    /// Always "ed25519" in this format.
    algorithm: String,
    /// The signer's 32-byte public key, base64.
    public_key: String,
    /// The 64-byte signature, base64.
    signature: String,
}

/// The file split into what was signed and the signature sections.
struct Split<'a> {
    /// sha256 of the file without its signature sections.
    digest: [u8; 32],
    /// The data of each signature section, in file order.
    sections: Vec<&'a [u8]>,
}

/// Walks the top-level sections (nested modules and components are skipped
/// whole) and hashes every byte that is not a signature section.
fn split(bytes: &[u8]) -> Result<Split<'_>, SignError> {
    let perr = |e: wasmparser::BinaryReaderError| SignError::Parse(e.message().to_string());
    let mut parser = Parser::new(0);
    let mut hasher = Sha256::new();
    let mut sections = Vec::new();
    let mut offset = 0;
    loop {
        let Chunk::Parsed { consumed, payload } =
            parser.parse(&bytes[offset..], true).map_err(perr)?
        else {
            return Err(SignError::Parse("truncated".into()));
        };
        let mut end = offset + consumed;
        match &payload {
            Payload::ModuleSection {
                unchecked_range, ..
            }
            | Payload::ComponentSection {
                unchecked_range, ..
            } => end = unchecked_range.end,
            Payload::CodeSectionStart { size, .. } => {
                parser.skip_section();
                end += *size as usize;
            }
            Payload::CustomSection(c) if c.name() == SECTION => {
                sections.push(c.data());
                offset = end;
                continue;
            }
            Payload::End(_) => break,
            _ => {}
        }
        if end > bytes.len() {
            return Err(SignError::Parse("a section runs past the end".into()));
        }
        hasher.update(&bytes[offset..end]);
        offset = end;
    }
    Ok(Split {
        digest: hasher.finalize().into(),
        sections,
    })
}

fn message(digest: &[u8; 32]) -> Vec<u8> {
    [CONTEXT, digest].concat()
}

/// Returns `bytes` with one more signature section, by `key`.
pub fn sign(bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignError> {
    let digest = split(bytes)?.digest;
    let signature = key.sign(&message(&digest));
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = SectionBody {
        algorithm: "ed25519".into(),
        public_key: b64.encode(key.verifying_key().as_bytes()),
        signature: b64.encode(signature.to_bytes()),
    };
    let section = wasm_encoder::CustomSection {
        name: SECTION.into(),
        data: serde_json::to_vec(&body)
            .expect("a signature serializes")
            .into(),
    };
    let mut out = bytes.to_vec();
    wasm_encoder::Section::append_to(&section, &mut out);
    Ok(out)
}

/// One signature section of a file, checked against the file.
#[derive(Debug)]
pub struct Found {
    /// The signer, when the section could be read.
    pub key: Option<VerifyingKey>,
    /// Why it does not verify; None when it does.
    pub problem: Option<String>,
}

impl Found {
    /// The signer's key id, or a placeholder for an unreadable section.
    pub fn signer(&self) -> String {
        self.key
            .as_ref()
            .map_or_else(|| "(unreadable)".into(), key_id)
    }
}

/// Every signature section of `bytes`, each checked against the rest of
/// the file.
pub fn signatures(bytes: &[u8]) -> Result<Vec<Found>, SignError> {
    let split = split(bytes)?;
    let msg = message(&split.digest);
    Ok(split
        .sections
        .iter()
        .map(|data| match decode(data) {
            Err(problem) => Found {
                key: None,
                problem: Some(problem),
            },
            Ok((key, sig)) => Found {
                key: Some(key),
                problem: key
                    .verify_strict(&msg, &sig)
                    .err()
                    .map(|_| "does not verify: the file changed after it was signed".into()),
            },
        })
        .collect())
}

fn decode(data: &[u8]) -> Result<(VerifyingKey, Signature), String> {
    let body: SectionBody =
        serde_json::from_slice(data).map_err(|e| format!("unreadable section: {e}"))?;
    if body.algorithm != "ed25519" {
        return Err(format!("unknown algorithm {:?}", body.algorithm));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let key: [u8; 32] = b64
        .decode(&body.public_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or("unreadable public key")?;
    let sig: [u8; 64] = b64
        .decode(&body.signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or("unreadable signature")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|e| format!("bad public key: {e}"))?;
    Ok((key, Signature::from_bytes(&sig)))
}

// ---------------------------------------------------------------- trust

/// `[plugin_trust]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPluginTrust {
    /// Public key files whose signatures count.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Refuse plugins without a valid signature by a trusted key.
    pub require_signature: Option<bool>,
}

/// `[plugin_trust]` resolved: the keys loaded.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// Keys whose signatures count, with the file each came from.
    pub trusted_keys: Vec<(PathBuf, VerifyingKey)>,
    /// Refuse plugins without a valid signature by a trusted key.
    pub require_signature: bool,
}

/// Loads the trusted keys; errors name the config key.
pub fn resolve(raw: RawPluginTrust) -> Result<Arc<TrustPolicy>, (String, String)> {
    let mut trusted_keys = Vec::new();
    for path in raw.trusted_keys {
        let key = read_public_key(&path)
            .map_err(|e| ("plugin_trust.trusted_keys".to_string(), e.to_string()))?;
        trusted_keys.push((path, key));
    }
    let require_signature = raw.require_signature.unwrap_or(false);
    if require_signature && trusted_keys.is_empty() {
        return Err((
            "plugin_trust.require_signature".into(),
            "true needs at least one key in plugin_trust.trusted_keys".into(),
        ));
    }
    Ok(Arc::new(TrustPolicy {
        trusted_keys,
        require_signature,
    }))
}

/// The check at load: any signature that does not verify refuses the
/// plugin (the file changed); with `require_signature`, so does a plugin
/// with no valid signature by a trusted key.
pub fn check(bytes: &[u8], spec: &PluginSpec) -> Result<(), PluginError> {
    let trust = &spec.trust;
    let refuse = |reason: String| PluginError::Signature {
        name: spec.name.clone(),
        path: spec.path.clone(),
        reason,
    };
    let found = signatures(bytes).map_err(|e| refuse(e.to_string()))?;
    if let Some(bad) = found.iter().find(|f| f.problem.is_some()) {
        let why = bad.problem.as_deref().unwrap_or_default();
        return Err(refuse(format!("signature by {} {why}", bad.signer())));
    }
    let by_trusted = found.iter().find_map(|f| {
        trust
            .trusted_keys
            .iter()
            .find(|(_, k)| Some(k) == f.key.as_ref())
    });
    let signers: Vec<String> = found.iter().map(Found::signer).collect();
    match by_trusted {
        Some((path, key)) => {
            info!(plugin = %spec.name, key = %path.display(), key_id = %key_id(key), "plugin signature verified");
            Ok(())
        }
        None if trust.require_signature && found.is_empty() => Err(refuse(
            "not signed, and plugin_trust.require_signature = true (sign it with `wasmtp plugin sign`)"
                .into(),
        )),
        None if trust.require_signature => Err(refuse(format!(
            "signed only by keys not in plugin_trust.trusted_keys: {}",
            signers.join(", ")
        ))),
        None if found.is_empty() => Ok(()),
        None => {
            warn!(plugin = %spec.name, signers = %signers.join(", "), "plugin signed by keys not in plugin_trust.trusted_keys; loaded because require_signature = false");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with a code section (components keep their code in
    /// nested modules, which `split` skips whole; a module's own code
    /// section is skipped the other way).
    fn module() -> Vec<u8> {
        use wasm_encoder::{CodeSection, Function, FunctionSection, Module, TypeSection};
        let mut types = TypeSection::new();
        types.ty().function([], [wasm_encoder::ValType::I32]);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        let mut code = CodeSection::new();
        let mut f = Function::new([]);
        f.instructions().i32_const(42).end();
        code.function(&f);
        let mut m = Module::new();
        m.section(&types).section(&funcs).section(&code);
        m.finish()
    }

    #[test]
    fn signatures_coexist_and_cover_every_other_byte() {
        let (a, b) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let unsigned = module();
        let signed = sign(&sign(&unsigned, &a).unwrap(), &b).unwrap();
        let found = signatures(&signed).unwrap();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|f| f.problem.is_none()), "{found:?}");
        assert_eq!(found[0].key, Some(a.verifying_key()));
        // The last byte of the unsigned module is in its code section.
        let mut changed = signed.clone();
        changed[unsigned.len() - 2] ^= 1;
        let found = signatures(&changed).unwrap();
        assert!(found.iter().all(|f| f.problem.is_some()), "{found:?}");
        assert!(signatures(&signed[..signed.len() - 1]).is_err());
    }
}
