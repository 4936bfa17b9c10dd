//! Job artifacts (SPEC §7, §7.2): files under `Artifacts.Dir/<tenant>/<job_id>/<name>`,
//! written (temp file, fsync, rename) before the completing transaction
//! that inserts their metadata rows. See docs/adr/0019-artifacts.md.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The artifact that holds a completed job's result JSON.
pub const COMPLETION: &str = "completion";
/// Chunk size for hashing, copying and serving.
pub const CHUNK: usize = 64 * 1024;

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

/// An artifact written to disk, ready for its metadata row.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub path: String,
    /// Base64 of the bytes when `size <= Artifacts.InlineMaxBytes`.
    pub inline: Option<String>,
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

/// Write every artifact of a job (blocking I/O off the runtime). A source
/// file that is missing is skipped with a warning; any other error fails.
pub async fn store_all(
    root: &str,
    tenant: &str,
    job_id: &str,
    items: Vec<NewArtifact>,
    inline_max: usize,
) -> std::io::Result<Vec<StoredArtifact>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let dir = std::path::absolute(root)?.join(tenant).join(job_id);
    let job_id = job_id.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let mut out = Vec::new();
        for item in items {
            match write_one(&dir, &item, inline_max) {
                Ok(a) => out.push(a),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(job = %job_id, artifact = %item.name, "declared artifact is missing");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })
    .await
    .map_err(std::io::Error::other)?
}

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
    let target = dir.join(&item.name);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        item.name,
        runsignal_actors::new_ulid()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
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
        drop(file);
        std::fs::rename(&tmp, &target)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        let inline = (size as usize <= inline_max)
            .then(|| base64::engine::general_purpose::STANDARD.encode(&small));
        Ok(StoredArtifact {
            name: item.name.clone(),
            size,
            sha256: hex::encode(hasher.finalize()),
            content_type: item.content_type.clone(),
            path: target.display().to_string(),
            inline,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Delete artifact files (after the prune commit), then their job
/// directories when empty. Best effort.
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
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir); // only when empty
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::valid_name;

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
