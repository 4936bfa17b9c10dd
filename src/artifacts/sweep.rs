//! The orphan sweep (ADR 0023): files under `Artifacts.Dir` that no
//! artifact row names. They are what a completion leaves when the process
//! stops between writing its files and its commit, or when the commit's
//! outcome was unknown (the store failed mid-commit). Only entries of the
//! layout `<tenant>/<jobId>/[<completionId>/]<file>` (job and completion
//! ids are ULIDs) are ever touched, and only once older than a grace
//! period, so a completion still on its way to its commit keeps its files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::store::Store;

/// How old an unreferenced file must be before the sweep removes it: far
/// longer than any completion takes from its write to its commit.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// Remove the files under `root` that no artifact row names and that were
/// last modified at least `min_age` ago, then their empty directories.
/// With `touched_since`, only job directories modified since then are
/// looked at (a new completion directory touches its job directory).
/// A job whose rows cannot be read is skipped. Returns the files removed.
pub async fn sweep_orphans(
    store: &Store,
    root: &str,
    min_age: Duration,
    touched_since: Option<SystemTime>,
) -> usize {
    let Ok(root) = std::path::absolute(root) else {
        return 0;
    };
    let jobs = tokio::task::spawn_blocking(move || job_dirs(&root, touched_since))
        .await
        .unwrap_or_default();
    let mut removed = 0;
    for (tenant, job_id, dir) in jobs {
        let rows = match store.list_artifacts(&tenant, &job_id).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "orphan sweep: artifact rows unreadable; job skipped");
                continue;
            }
        };
        let named: Vec<PathBuf> = rows.into_iter().map(|r| PathBuf::from(r.path)).collect();
        removed += tokio::task::spawn_blocking(move || sweep_job(&dir, &job_id, &named, min_age))
            .await
            .unwrap_or(0);
    }
    if removed > 0 {
        tracing::info!(files = removed, "orphan artifact files removed");
    }
    removed
}

/// `(tenant, jobId, dir)` of every job directory of the layout. Symbolic
/// links are never followed.
fn job_dirs(root: &Path, touched_since: Option<SystemTime>) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for (tenant, tenant_dir) in subdirs(root) {
        if crate::paths::component(&tenant).is_err() {
            continue;
        }
        for (job_id, dir) in subdirs(&tenant_dir) {
            let touched = match touched_since {
                None => true,
                Some(since) => std::fs::symlink_metadata(&dir)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since),
            };
            if super::is_ulid(&job_id) && touched {
                out.push((tenant.clone(), job_id, dir));
            }
        }
    }
    out
}

/// The directories directly in `dir` (not symbolic links), by name.
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect()
}

/// Remove one job directory's unnamed files (directly in it, or in its
/// completion directories), then the directories left empty.
fn sweep_job(dir: &Path, job_id: &str, named: &[PathBuf], min_age: Duration) -> usize {
    let now = SystemTime::now();
    let old_enough = |path: &Path| {
        min_age.is_zero()
            || std::fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= min_age))
    };
    // A row names a file when its path ends with `<jobId>/<rest>`: the same
    // file even if `Artifacts.Dir` is now spelled another way.
    let is_named = |file: &Path| {
        let rest = file.strip_prefix(dir).unwrap_or(file);
        let tail = Path::new(job_id).join(rest);
        named.iter().any(|p| p.ends_with(&tail))
    };
    // Directories too are removed only when old enough, judged before
    // this sweep empties them: a completion may have just made one.
    let job_dir_old = old_enough(dir);
    let mut removed = 0;
    let mut sweep_files = |in_dir: &Path| {
        for file in regular_files(in_dir) {
            if !is_named(&file) && old_enough(&file) && std::fs::remove_file(&file).is_ok() {
                removed += 1;
            }
        }
    };
    sweep_files(dir);
    for (name, completion_dir) in subdirs(dir) {
        if super::is_ulid(&name) {
            let completion_dir_old = old_enough(&completion_dir);
            sweep_files(&completion_dir);
            if completion_dir_old {
                let _ = std::fs::remove_dir(&completion_dir); // only when empty
            }
        }
    }
    if job_dir_old {
        let _ = std::fs::remove_dir(dir); // only when empty
    }
    removed
}

/// The regular files directly in `dir`.
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect()
}
