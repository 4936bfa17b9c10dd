//! Job artifacts (SPEC §7, §7.2, §11). A small artifact (at most
//! [`held_max`] bytes) is held in its database row, committed with the
//! completion (ADR 0061). A larger one is a file under
//! `Artifacts.Dir/<tenant>/<jobId>/<completionId>/<name>`: each completion
//! writes its files (fsync) under a directory of its own before the
//! completing transaction; the rows that commit name them, so only the
//! committed completion's bytes are ever served. A refused completion's
//! files are removed at once, a stranded one's by [`sweep_orphans`].
//! See docs/adr/0019-artifacts.md, docs/adr/0023-artifact-integrity-and-serving.md
//! and docs/adr/0061-small-artifacts-held-in-the-database.md.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::store::StoreResult;

mod sweep;
pub use sweep::{sweep_orphans, ORPHAN_GRACE};

/// The artifact that holds a completed job's result JSON.
pub const COMPLETION: &str = "completion";
/// Chunk size for hashing, copying and serving.
pub const CHUNK: usize = 64 * 1024;
/// The largest artifact held in the database instead of a file, whatever
/// `Artifacts.InlineMaxBytes` says (ADR 0061).
pub const HELD_MAX_BYTES: usize = 64 * 1024;
/// The most bytes of held artifacts one completion hashes on the caller's
/// (HTTP worker's) thread; more go to the blocking pool.
const HASHED_IN_PLACE: usize = 256 * 1024;

/// The largest artifact held in its database row: one the `done` event
/// carries inline anyway (`Artifacts.InlineMaxBytes`), up to
/// [`HELD_MAX_BYTES`].
pub fn held_max(inline_max: usize) -> usize {
    inline_max.min(HELD_MAX_BYTES)
}

/// Whether storing `items` writes any file (a source file whose size is
/// unknown yet counts as one).
pub fn writes_files(items: &[NewArtifact], inline_max: usize) -> bool {
    items.iter().any(|a| match &a.source {
        Source::Bytes(b) => b.len() > held_max(inline_max),
        Source::File(_) => true,
    })
}

/// `[A-Za-z0-9._-]{1,128}`, no leading dot.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where an artifact's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Bytes(Vec<u8>),
    /// A file to copy (a built-in job's workspace).
    File(PathBuf),
}

/// An artifact to store.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub name: String,
    pub content_type: String,
    pub source: Source,
}

/// An artifact stored, ready for its metadata row.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    /// The file (empty when the row holds the bytes).
    pub path: String,
    /// Base64 of the bytes when `size <= Artifacts.InlineMaxBytes`.
    pub inline: Option<String>,
    /// The bytes, when the row holds them (`size <= held_max`).
    pub content: Option<Vec<u8>>,
}

impl StoredArtifact {
    /// The `done` event / webhook shape: metadata + url, plus
    /// `content_base64` when small enough to inline.
    pub fn event_json(&self, job_id: &str) -> Value {
        let mut v = metadata_json(
            job_id,
            &self.name,
            self.size,
            &self.sha256,
            &self.content_type,
        );
        if let Some(b64) = &self.inline {
            v["content_base64"] = json!(b64);
        }
        v
    }
}

/// `{"name","size","sha256","content_type","url"}`.
pub fn metadata_json(job_id: &str, name: &str, size: u64, sha256: &str, ct: &str) -> Value {
    json!({
        "name": name, "size": size, "sha256": sha256, "content_type": ct,
        "url": format!("/jobs/{job_id}/artifacts/{name}"),
    })
}

pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A completion's files, written under its own directory and not yet
/// named by any row: keep them when the completion commits, else
/// [`Staged::settle`] removes them.
#[derive(Debug, Default)]
pub struct Staged {
    /// `<Dir>/<tenant>/<jobId>/<completionId>` (`None`: nothing written).
    dir: Option<PathBuf>,
    pub artifacts: Vec<StoredArtifact>,
}

impl Staged {
    /// After the completing write: committed → kept; refused (lease lost,
    /// canceled, not found) → removed now; failed otherwise (the commit's
    /// outcome is unknown) → left for [`sweep_orphans`], which removes
    /// them only if no row names them.
    pub async fn settle<T>(self, outcome: &StoreResult<T>) {
        match outcome {
            Ok(_) => {}
            Err(e) if e.is_refusal() => self.discard().await,
            Err(e) => {
                if let Some(dir) = &self.dir {
                    tracing::warn!(dir = %dir.display(), error = %e,
                        "completion outcome unknown; its files are left to the orphan sweep");
                }
            }
        }
    }

    /// Remove the files (best effort).
    pub async fn discard(self) {
        let Some(dir) = self.dir else { return };
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing refused artifacts failed");
            }
            if let Some(job_dir) = dir.parent() {
                let _ = std::fs::remove_dir(job_dir); // only when empty
            }
        })
        .await;
    }
}

/// Store every artifact of one completion: a small one in memory, for its
/// row (ADR 0061); the others as files under a fresh
/// `<root>/<tenant>/<jobId>/<completionId>/` (blocking I/O off the
/// runtime; every component goes through [`crate::paths::join`]). A source
/// file that is missing is skipped with a warning; any other error fails
/// and leaves nothing behind. A completion whose artifacts are all small
/// bytes (and few) touches no file and no other thread.
pub async fn store_all(
    root: &str,
    tenant: &str,
    job_id: &str,
    items: Vec<NewArtifact>,
    inline_max: usize,
) -> std::io::Result<Staged> {
    let bytes: usize = items
        .iter()
        .map(|a| match &a.source {
            Source::Bytes(b) => b.len(),
            Source::File(_) => 0,
        })
        .sum();
    if !writes_files(&items, inline_max) && bytes <= HASHED_IN_PLACE {
        let artifacts = items
            .into_iter()
            .filter_map(|item| match item.source {
                Source::Bytes(bytes) => Some(held(item.name, item.content_type, bytes, inline_max)),
                Source::File(_) => None,
            })
            .collect();
        return Ok(Staged {
            dir: None,
            artifacts,
        });
    }
    let root = std::path::absolute(root)?;
    let completion_id = runsignal_actors::new_ulid();
    let dir = crate::paths::join(&root, &[tenant, job_id, &completion_id])?;
    let job_id = job_id.to_owned();
    tokio::task::spawn_blocking(move || {
        let result = write_all(&root, &dir, &job_id, items, inline_max);
        match result {
            Ok((artifacts, wrote)) => Ok(Staged {
                dir: wrote.then_some(dir),
                artifacts,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                if let Some(job_dir) = dir.parent() {
                    let _ = std::fs::remove_dir(job_dir); // only when empty
                }
                Err(e)
            }
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// An artifact its row holds: hashed, and inline when small enough.
fn held(name: String, content_type: String, bytes: Vec<u8>, inline_max: usize) -> StoredArtifact {
    let inline = (bytes.len() <= inline_max)
        .then(|| base64::engine::general_purpose::STANDARD.encode(&bytes));
    StoredArtifact {
        name,
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        content_type,
        path: String::new(),
        inline,
        content: Some(bytes),
    }
}

/// A source file's bytes when it is small enough to be held in its row
/// (`None`: too large, written as a file).
fn small_file(path: &Path, held_max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    if meta.len() > held_max as u64 {
        return Ok(None);
    }
    // Read at most one byte more than fits: a file that grew meanwhile is
    // written as a file after all.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(held_max as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() <= held_max).then_some(bytes))
}

/// The artifacts stored, and whether any file was written (under `dir`).
fn write_all(
    root: &Path,
    dir: &Path,
    job_id: &str,
    items: Vec<NewArtifact>,
    inline_max: usize,
) -> std::io::Result<(Vec<StoredArtifact>, bool)> {
    let held_max = held_max(inline_max);
    // A new job directory (and maybe tenant directory) needs its own entry
    // made durable too.
    let job_dir = dir.parent().unwrap_or(dir);
    let mut new_job_dir: Option<bool> = None;
    let mut out = Vec::new();
    for mut item in items {
        let small = match &mut item.source {
            // Moved out: the item is not written as a file.
            Source::Bytes(b) if b.len() <= held_max => Ok(Some(std::mem::take(b))),
            Source::Bytes(_) => Ok(None),
            Source::File(p) => small_file(p, held_max),
        };
        let stored = match small {
            Ok(Some(bytes)) => Ok(held(
                item.name.clone(),
                item.content_type.clone(),
                bytes,
                inline_max,
            )),
            Ok(None) => {
                if new_job_dir.is_none() {
                    new_job_dir = Some(!job_dir.exists());
                    std::fs::create_dir_all(dir)?;
                }
                write_one(dir, &item, inline_max)
            }
            Err(e) => Err(e),
        };
        match stored {
            Ok(a) => out.push(a),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(job = %job_id, artifact = %item.name, "declared artifact is missing");
            }
            Err(e) => return Err(e),
        }
    }
    let Some(new_job_dir) = new_job_dir else {
        return Ok((out, false));
    };
    if out.iter().all(|a| a.path.is_empty()) {
        // Every file to write went missing meanwhile.
        let _ = std::fs::remove_dir(dir);
        let _ = std::fs::remove_dir(job_dir); // only when empty
        return Ok((out, false));
    }
    sync_dir(dir);
    sync_dir(job_dir);
    if new_job_dir {
        if let Some(tenant_dir) = job_dir.parent() {
            sync_dir(tenant_dir);
        }
        sync_dir(root);
    }
    Ok((out, true))
}

/// `fsync` a directory so the entries made in it survive a crash (best
/// effort: not every platform can open a directory).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Write one file into the completion's own directory: nothing names it
/// until the completion commits, so it is written in place, hashed while
/// written, and `fsync`ed.
fn write_one(dir: &Path, item: &NewArtifact, inline_max: usize) -> std::io::Result<StoredArtifact> {
    let mut reader: Box<dyn Read> = match &item.source {
        Source::Bytes(b) => Box::new(std::io::Cursor::new(b.clone())),
        Source::File(p) => {
            if !std::fs::metadata(p)?.is_file() {
                return Err(std::io::ErrorKind::NotFound.into());
            }
            Box::new(std::fs::File::open(p)?)
        }
    };
    let target = crate::paths::join(dir, &[&item.name])?;
    let mut file = std::fs::File::create_new(&target)?;
    let mut hasher = Sha256::new();
    let mut small = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        size += n as u64;
        if size as usize <= inline_max {
            small.extend_from_slice(&buf[..n]);
        }
    }
    file.sync_all()?;
    let inline = (size as usize <= inline_max)
        .then(|| base64::engine::general_purpose::STANDARD.encode(&small));
    Ok(StoredArtifact {
        name: item.name.clone(),
        size,
        sha256: hex::encode(hasher.finalize()),
        content_type: item.content_type.clone(),
        path: target.display().to_string(),
        inline,
        content: None,
    })
}

/// Delete artifact files (after the prune commit), then their completion
/// and job directories when empty. Best effort.
pub async fn remove_files(paths: Vec<String>) {
    if paths.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for p in &paths {
            let path = Path::new(p);
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p, error = %e, "removing a pruned artifact failed");
                }
            }
            remove_empty_parents(path);
        }
    })
    .await;
}

/// Remove the file's directory when empty, and its job directory when that
/// was a completion directory (named by a ULID under a ULID) and is empty
/// now. Files of the layout before ADR 0023 sit in the job directory.
fn remove_empty_parents(file: &Path) {
    let Some(dir) = file.parent() else { return };
    if std::fs::remove_dir(dir).is_err() {
        return; // not empty (or gone)
    }
    let Some(job_dir) = dir.parent() else { return };
    let named_by_ulid = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(is_ulid);
    if named_by_ulid(dir) && named_by_ulid(job_dir) {
        let _ = std::fs::remove_dir(job_dir);
    }
}

/// A canonical ULID (as job and completion ids are written).
fn is_ulid(s: &str) -> bool {
    ulid::Ulid::from_string(s).is_ok_and(|u| u.to_string() == s)
}

/// Whether a stored artifact of this `Content-Type` is shown inline by a
/// browser (SPEC §11): JSON, plain text and raster images. Everything else
/// is served as an attachment, SVG and other XML images included (they can
/// carry script).
pub fn served_inline(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", "json")) | Some(("text", "plain")) => true,
        Some(("image", sub)) => !sub.is_empty() && !sub.contains("svg") && !sub.contains("xml"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{served_inline, valid_name};

    #[test]
    fn only_json_text_and_raster_images_are_inline() {
        for inline in [
            "application/json",
            "text/plain",
            "text/plain; charset=utf-8",
            "TEXT/Plain",
            "image/png",
            "image/jpeg",
            " image/gif ",
        ] {
            assert!(served_inline(inline), "{inline}");
        }
        for attachment in [
            "text/html",
            "application/xhtml+xml",
            "image/svg+xml",
            "image/svg",
            "application/octet-stream",
            "application/javascript",
            "text/xml",
            "application/json+evil",
            "image/",
            "",
            "textplain",
        ] {
            assert!(!served_inline(attachment), "{attachment}");
        }
    }

    #[test]
    fn names() {
        for ok in ["completion", "a", "report.txt", "A-b_c.9", &"x".repeat(128)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "é", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
