//! `serve --watch-plugins`: a development loop. A change to any configured
//! plugin file asks for the same reload SIGHUP does (the plugin set is
//! loaded again from the config file and swapped in; a broken set leaves the
//! running one serving), so rebuilding a plugin is enough to try it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use wasmtp::config::Settings;

/// Writes settle this long before the reload, so a half-written file is
/// never loaded and one build triggers one reload.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches the directories of the plugin files of `settings` (not built-in
/// or OCI plugins); each burst of changes bumps `reload` once. The watcher
/// lives as long as the returned value.
pub fn watch_plugins(
    settings: &Settings,
    reload: tokio::sync::watch::Sender<u64>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let files: HashSet<PathBuf> = settings
        .plugins
        .iter()
        .filter(|p| p.oci.is_none() && !p.path.to_string_lossy().starts_with("builtin:"))
        .filter_map(|p| std::path::absolute(&p.path).ok())
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let wanted = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only writes, creations and renames: the loader reading the file
        // (an access event) must not trigger the next reload.
        if let Ok(e) = event
            && (e.kind.is_create() || e.kind.is_modify())
            && e.paths.iter().any(|p| wanted.contains(p))
        {
            let _ = tx.send(());
        }
    })
    .context("starting the plugin file watcher")?;
    let dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(PathBuf::from))
        .collect();
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    tracing::info!(files = files.len(), "watching plugin files for changes");
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            tracing::info!("a plugin file changed: reloading");
            reload.send_modify(|n| *n += 1);
        }
    });
    Ok(watcher)
}
