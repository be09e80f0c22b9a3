//! `wasmtp plugin keygen|sign|verify|push|pull`: signing plugin files and
//! sharing them through OCI registries (the work is in `plugin::sign` and
//! `plugin::oci`; this file is the command line around it).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use wasmtp::plugin::{oci, sign};

#[derive(Subcommand)]
pub enum ShareCmd {
    /// Make an Ed25519 key pair: the secret key NAME (mode 0600) and the public key NAME.pub.
    Keygen {
        /// The secret key file to create (it must not exist).
        name: PathBuf,
    },
    /// Sign a plugin file in place (a signature section is appended; other signatures stay).
    Sign {
        /// The .wasm component.
        file: PathBuf,
        /// Secret key file (from `keygen`).
        #[arg(short, long)]
        key: PathBuf,
    },
    /// Check a plugin's signatures; exits non-zero if any does not verify or none is by --key.
    Verify {
        /// The .wasm component.
        file: PathBuf,
        /// Public key file(s) whose signature is required (NAME.pub).
        #[arg(short, long)]
        key: Vec<PathBuf>,
    },
    /// Push a plugin file to an OCI registry (REF like 127.0.0.1:5000/wasmtp/spam-score:1.0).
    Push {
        /// The .wasm component.
        file: PathBuf,
        /// registry/repository:tag
        reference: String,
        /// Plain HTTP even for a registry that is not on loopback.
        #[arg(long)]
        insecure: bool,
    },
    /// Pull a plugin from an OCI registry and print the sha256 to pin in [[plugin]].
    Pull {
        /// registry/repository:tag or registry/repository@sha256:...
        reference: String,
        /// Output file (default: the repository's last name + .wasm).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Plain HTTP even for a registry that is not on loopback.
        #[arg(long)]
        insecure: bool,
    },
}

pub fn run(cmd: ShareCmd) -> anyhow::Result<()> {
    match cmd {
        ShareCmd::Keygen { name } => {
            let public = sign::keygen(&name)?;
            let id = sign::key_id(&sign::read_public_key(&public)?);
            println!(
                "secret key: {} (keep it private)\npublic key: {} ({id}), for [plugin_trust] trusted_keys",
                name.display(),
                public.display()
            );
        }
        ShareCmd::Sign { file, key } => sign_file(&file, &key)?,
        ShareCmd::Verify { file, key } => verify(&file, &key)?,
        ShareCmd::Push {
            file,
            reference,
            insecure,
        } => {
            let bytes = read(&file)?;
            sign::signatures(&bytes).with_context(|| file.display().to_string())?;
            let pushed = runtime()?.block_on(oci::push(bytes, &reference, insecure))?;
            println!(
                "pushed {} to {reference}\nmanifest: {}\nsha256 = \"{}\"",
                file.display(),
                pushed.manifest_digest,
                pushed.sha256
            );
        }
        ShareCmd::Pull {
            reference,
            output,
            insecure,
        } => {
            let output = match output {
                Some(o) => o,
                None => default_output(&reference)?,
            };
            let pulled = runtime()?.block_on(oci::pull(&reference, insecure))?;
            std::fs::write(&output, &pulled.bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            println!(
                "pulled {reference} (manifest {}) to {}\nto load it, pin its digest in a [[plugin]]:\noci = \"{reference}\"\nsha256 = \"{}\"",
                pulled.manifest_digest,
                output.display(),
                pulled.sha256
            );
        }
    }
    Ok(())
}

fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn default_output(reference: &str) -> anyhow::Result<PathBuf> {
    let r = oci::parse_reference(reference)?;
    let last = r.repository().rsplit('/').next().unwrap_or("plugin");
    Ok(PathBuf::from(format!("{last}.wasm")))
}

fn sign_file(file: &Path, key: &Path) -> anyhow::Result<()> {
    let secret = sign::read_secret_key(key)?;
    let id = sign::key_id(&secret.verifying_key());
    let bytes = read(file)?;
    let found = sign::signatures(&bytes).with_context(|| file.display().to_string())?;
    if found.iter().any(|f| f.key == Some(secret.verifying_key())) {
        println!("{}: already signed by {id}", file.display());
        return Ok(());
    }
    let signed = sign::sign(&bytes, &secret).with_context(|| file.display().to_string())?;
    // Whole or not at all: a half-written plugin would fail to load.
    let tmp = file.with_extension("wasm.signing");
    std::fs::write(&tmp, &signed).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("replacing {}", file.display()))?;
    println!(
        "{}: signed by {} ({id}); {} signature(s)",
        file.display(),
        key.display(),
        found.len() + 1
    );
    Ok(())
}

fn verify(file: &Path, keys: &[PathBuf]) -> anyhow::Result<()> {
    let wanted = keys
        .iter()
        .map(|k| Ok((k, sign::read_public_key(k)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bytes = read(file)?;
    let found = sign::signatures(&bytes).with_context(|| file.display().to_string())?;
    if found.is_empty() {
        bail!("{}: not signed", file.display());
    }
    for f in &found {
        match &f.problem {
            None => println!("{}: signature by {}: ok", file.display(), f.signer()),
            Some(p) => println!("{}: signature by {}: {p}", file.display(), f.signer()),
        }
    }
    let bad = found.iter().filter(|f| f.problem.is_some()).count();
    if bad > 0 {
        bail!(
            "{}: {bad} of {} signature(s) do not verify: the file changed after it was signed",
            file.display(),
            found.len()
        );
    }
    if wanted.is_empty() {
        println!(
            "{}: ok (signatures intact; pass --key NAME.pub to check who signed)",
            file.display()
        );
        return Ok(());
    }
    let by: Vec<&&PathBuf> = wanted
        .iter()
        .filter(|(_, k)| found.iter().any(|f| f.key.as_ref() == Some(k)))
        .map(|(p, _)| p)
        .collect();
    if by.is_empty() {
        bail!(
            "{}: not signed by {}",
            file.display(),
            keys.iter()
                .map(|k| k.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    for p in by {
        println!("{}: ok: signed by {}", file.display(), p.display());
    }
    Ok(())
}
