//! `wasmtp user add|passwd|del|list`: edits the users file the server
//! reads (by default `<data_dir>/users` of the same config). Passwords come
//! from a prompt, or from stdin's first line when stdin is not a terminal;
//! never from argv, where `ps` would show them.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use wasmtp::users::{self, User};

/// What to do with the users file.
#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user (asks for the password).
    Add {
        /// Login name.
        name: String,
        /// Restrict MAIL FROM to these addresses or @domains (repeatable).
        #[arg(long = "allow-sender")]
        senders: Vec<String>,
    },
    /// Change a user's password.
    Passwd {
        /// Login name.
        name: String,
    },
    /// Delete a user.
    Del {
        /// Login name.
        name: String,
    },
    /// List users (names and sender restrictions, never hashes).
    List,
}

pub fn run(cmd: UserCmd, file: PathBuf) -> anyhow::Result<()> {
    let mut list = users::read(&file)?;
    let find = |list: &[User], name: &str| {
        let name = name.to_ascii_lowercase();
        list.iter().position(|u| u.name == name)
    };
    match cmd {
        UserCmd::List => {
            for u in &list {
                if u.senders.is_empty() {
                    println!("{}", u.name);
                } else {
                    println!("{} (senders: {})", u.name, u.senders.join(", "));
                }
            }
            return Ok(());
        }
        UserCmd::Add { name, senders } => {
            if !users::valid_name(&name) {
                bail!("invalid user name {name:?}: use letters, digits and . _ - + @");
            }
            if find(&list, &name).is_some() {
                bail!("user {name} already exists in {}", file.display());
            }
            let hash = users::hash_password(&password()?);
            list.push(User {
                name: name.to_ascii_lowercase(),
                hash,
                senders: senders.iter().map(|s| s.to_ascii_lowercase()).collect(),
            });
        }
        UserCmd::Passwd { name } => {
            let i = find(&list, &name)
                .with_context(|| format!("no user {name} in {}", file.display()))?;
            list[i].hash = users::hash_password(&password()?);
        }
        UserCmd::Del { name } => {
            let i = find(&list, &name)
                .with_context(|| format!("no user {name} in {}", file.display()))?;
            list.remove(i);
        }
    }
    users::write(&file, &list)?;
    eprintln!("{} updated", file.display());
    Ok(())
}

fn password() -> anyhow::Result<String> {
    let pw = if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            bail!("the passwords differ");
        }
        a
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}
