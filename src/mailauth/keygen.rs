//! `wasmtp dkim keygen`: a new signing key and the DNS TXT record that
//! publishes it. RSA keys come from the `rsa` crate (ring cannot generate
//! them), Ed25519 keys from ring through mail-auth; both are written as
//! PKCS#8 PEM, which `[[dkim.sign]] key` reads.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use rsa::pkcs8::der::pem::LineEnding;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};

/// Key types DKIM uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA, 2048 bits (what every verifier understands).
    Rsa,
    /// Ed25519 (RFC 8463): short keys; not every verifier knows it yet, so
    /// sign with both.
    Ed25519,
}

impl Algorithm {
    /// `k=` in the record.
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// A generated key and its record.
pub struct Generated {
    /// The private key, PKCS#8 PEM.
    pub private_pem: String,
    /// `SELECTOR._domainkey.DOMAIN`
    pub record_name: String,
    /// `v=DKIM1; k=...; p=...`
    pub record_value: String,
}

impl Generated {
    /// The record as a zone-file line, the value cut into strings of at
    /// most 255 characters (a TXT string's limit).
    pub fn zone_line(&self) -> String {
        let parts: Vec<String> = self
            .record_value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!("{}. IN TXT ( {} )", self.record_name, parts.join(" "))
    }
}

/// Generates a key for `domain` under `selector`.
pub fn generate(domain: &str, selector: &str, algorithm: Algorithm) -> Result<Generated, String> {
    let (private_pem, public) = match algorithm {
        Algorithm::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| format!("generating an RSA key: {e}"))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| format!("encoding the RSA key: {e}"))?;
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| format!("encoding the RSA public key: {e}"))?;
            (pem.to_string(), public.as_bytes().to_vec())
        }
        Algorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8()
                .map_err(|e| format!("generating an Ed25519 key: {e}"))?;
            let key = Ed25519Key::from_pkcs8_der(&der)
                .map_err(|e| format!("reading the new Ed25519 key: {e}"))?;
            let pem = rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
                .map_err(|e| format!("encoding the Ed25519 key: {e}"))?;
            (pem, key.public_key())
        }
    };
    Ok(Generated {
        private_pem,
        record_name: format!("{selector}._domainkey.{domain}"),
        record_value: format!(
            "v=DKIM1; k={}; p={}",
            algorithm.tag(),
            base64::engine::general_purpose::STANDARD.encode(public)
        ),
    })
}

/// Writes the private key to `DIR/DOMAIN.SELECTOR.key`, mode 0600. An
/// existing file is not overwritten (it may be the key in use) unless
/// `force`: then the new key is written and synced beside it and renamed
/// over it, so a reload reads the old key or the new one, never half.
pub fn write_key(
    dir: &Path,
    domain: &str,
    selector: &str,
    pem: &str,
    force: bool,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{domain}.{selector}.key"));
    let target = if force {
        dir.join(format!(
            ".{domain}.{selector}.key.{}.new",
            std::process::id()
        ))
    } else {
        path.clone()
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists if !force => format!(
                "{} exists: not overwriting a key that may be in use (choose another selector, or --force to replace it)",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", target.display()),
        })?;
    let written = f
        .write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            if force {
                std::fs::rename(&target, &path)
            } else {
                Ok(())
            }
        });
    if let Err(e) = written {
        if force {
            let _ = std::fs::remove_file(&target);
        }
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_key_loads_as_a_signing_key_and_its_record_has_the_raw_key() {
        let g = generate("example.org", "ed", Algorithm::Ed25519).unwrap();
        assert_eq!(g.record_name, "ed._domainkey.example.org");
        let p = g
            .record_value
            .strip_prefix("v=DKIM1; k=ed25519; p=")
            .unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        assert_eq!(raw.len(), 32);
        assert!(g.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), "example.org", "ed", &g.private_pem, false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = write_key(dir.path(), "example.org", "ed", &g.private_pem, false).unwrap_err();
        assert!(again.contains("not overwriting"), "{again}");
        let other = generate("example.org", "ed", Algorithm::Ed25519).unwrap();
        write_key(dir.path(), "example.org", "ed", &other.private_pem, true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), other.private_pem);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn long_values_are_split_into_255_character_strings() {
        let g = Generated {
            private_pem: String::new(),
            record_name: "s._domainkey.example.org".into(),
            record_value: "x".repeat(300),
        };
        let line = g.zone_line();
        assert!(line.starts_with("s._domainkey.example.org. IN TXT ( \""));
        assert!(line.contains(&format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))));
    }
}
