//! `wasmtp plugin new NAME --lang LANG`: writes a ready plugin project from the templates built
//! into the binary (`templates/<lang>/**` in the repository, embedded by build.rs). In file
//! contents and names, `{{name}}` becomes NAME (kebab-case), `{{name_snake}}` NAME with `_`, and
//! `{{sdk_version}}` the version of the SDKs this wasmtp ships.

use std::path::{Path, PathBuf};

use anyhow::Context;

include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// Arguments of `wasmtp plugin new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The plugin's name, kebab-case (e.g. `tag-external`).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// The language of the template (see `wasmtp plugin new --list`).
    #[arg(long, required_unless_present = "list")]
    lang: Option<String>,
    /// Where to write the project (default: ./NAME); must not exist or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// List the languages this wasmtp has templates for.
    #[arg(long)]
    list: bool,
}

/// The languages with a template, in order.
fn languages() -> Vec<&'static str> {
    let mut langs: Vec<&str> = TEMPLATES.iter().map(|(l, ..)| *l).collect();
    langs.dedup();
    langs
}

/// Runs `plugin new`.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    if args.list {
        for lang in languages() {
            let files = TEMPLATES.iter().filter(|(l, ..)| *l == lang).count();
            println!("{lang}\t{files} files");
        }
        return Ok(());
    }
    let lang = args.lang.as_deref().unwrap_or_default();
    let name = args.name.unwrap_or_default();
    check_name(&name)?;
    let files: Vec<_> = TEMPLATES.iter().filter(|(l, ..)| *l == lang).collect();
    anyhow::ensure!(
        !files.is_empty(),
        "no template for {lang:?} in this wasmtp (languages: {})",
        languages().join(", ")
    );
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        anyhow::ensure!(empty, "{} exists and is not empty", dir.display());
    }
    let subst = |s: &str| {
        s.replace("{{name}}", &name)
            .replace("{{name_snake}}", &name.replace('-', "_"))
            .replace("{{sdk_version}}", SDK_VERSION)
    };
    for (_, path, exec, bytes) in &files {
        let target = dir.join(subst(path));
        let contents = match std::str::from_utf8(bytes) {
            Ok(text) => subst(text).into_bytes(),
            Err(_) => bytes.to_vec(),
        };
        write(&target, &contents, *exec)?;
    }
    println!(
        "wrote a {lang} plugin project {} ({} files); see its README.md to build and test it",
        dir.display(),
        files.len()
    );
    Ok(())
}

/// kebab-case: lower-case ASCII letters, digits and single hyphens, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        ok,
        "{name:?} is not a plugin name: use kebab-case (lower-case letters, digits and single hyphens, starting with a letter, at most 64 characters), e.g. tag-external"
    );
    Ok(())
}

fn write(target: &Path, contents: &[u8], exec: bool) -> anyhow::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(target, contents)
        .with_context(|| format!("cannot write {}", target.display()))?;
    if exec {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", target.display()))?;
    }
    Ok(())
}
