//! `wasmtp dkim keygen DOMAIN --selector S [--algorithm rsa|ed25519] [--dir D] [--force]`:
//! writes a new signing key (mode 0600, over an existing file only with
//! `--force`) and prints the TXT record to publish and the `[[dkim.sign]]`
//! block to add.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Subcommand, ValueEnum};
use wasmtp::mailauth::keygen::{self, Algorithm};

/// `wasmtp dkim ...`
#[derive(Subcommand)]
pub enum DkimCmd {
    /// Generate a signing key and print the DNS TXT record that publishes it.
    Keygen {
        /// The signing domain (d=), e.g. example.org.
        domain: String,
        /// The selector (s=): the record goes to SELECTOR._domainkey.DOMAIN.
        #[arg(long, short)]
        selector: String,
        /// Key type.
        #[arg(long, short, value_enum, default_value_t = KeyType::Rsa)]
        algorithm: KeyType,
        /// Where to write DOMAIN.SELECTOR.key.
        #[arg(long, short, default_value = "wasmtp-data/dkim")]
        dir: PathBuf,
        /// Replace an existing key file of that domain and selector (its
        /// published record no longer matches: mail signed with it and
        /// still queued will fail verification).
        #[arg(long)]
        force: bool,
    },
}

/// `--algorithm`
#[derive(Clone, Copy, ValueEnum)]
pub enum KeyType {
    /// RSA, 2048 bits.
    Rsa,
    /// Ed25519 (RFC 8463).
    Ed25519,
}

/// Runs a `dkim` command.
pub fn run(cmd: DkimCmd) -> anyhow::Result<()> {
    match cmd {
        DkimCmd::Keygen {
            domain,
            selector,
            algorithm,
            dir,
            force,
        } => {
            let domain = domain.trim_end_matches('.').to_lowercase();
            wasmtp::smtp::address::check_domain(&domain)
                .ok()
                .filter(|()| !domain.starts_with('['))
                .ok_or_else(|| anyhow!("{domain:?} is not a domain name"))?;
            let algorithm = match algorithm {
                KeyType::Rsa => Algorithm::Rsa,
                KeyType::Ed25519 => Algorithm::Ed25519,
            };
            let g = keygen::generate(&domain, &selector, algorithm).map_err(|e| anyhow!(e))?;
            let path = keygen::write_key(&dir, &domain, &selector, &g.private_pem, force)
                .map_err(|e| anyhow!(e))?;
            println!(
                "wrote {} ({}, mode 0600)\n",
                path.display(),
                algorithm.tag()
            );
            println!("Publish this DNS TXT record:\n\n{}\n", g.zone_line());
            println!("(name {}, value {})\n", g.record_name, g.record_value);
            println!(
                "and add to the config:\n\n[[dkim.sign]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey = \"{}\"",
                path.display()
            );
            Ok(())
        }
    }
}
