//! Pack definitions (`Executor.PacksDir`, one JSON file per pack), validated
//! at start-up: a bad file stops start-up with its name and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The packs shipped in `config/packs/`, compiled in for when the binary runs
/// away from its source tree with the default `PacksDir`.
const EMBEDDED: &[(&str, &str)] = &[(
    "external.json",
    include_str!("../config/packs/external.json"),
)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    Builtin,
    Remote,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub executor: ExecutorKind,
    #[serde(default)]
    pub steps: Vec<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read packs directory {0}: {1}")]
    Dir(String, std::io::Error),
    #[error("pack file {file}: {message}")]
    Invalid { file: String, message: String },
}

#[derive(Debug, Clone, Default)]
pub struct Packs(BTreeMap<String, Pack>);

impl Packs {
    /// Load every `*.json` in `dir`; the default dir falls back to the
    /// embedded packs when it does not exist.
    pub fn load(dir: &str, is_default: bool) -> Result<Packs, PackError> {
        let path = Path::new(dir);
        if is_default && !path.is_dir() {
            let mut packs = Packs::default();
            for (file, text) in EMBEDDED {
                packs.add(file, text)?;
            }
            return Ok(packs);
        }
        let entries = std::fs::read_dir(path).map_err(|e| PackError::Dir(dir.to_owned(), e))?;
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut packs = Packs::default();
        for file in files {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|e| PackError::Invalid {
                file: name.clone(),
                message: e.to_string(),
            })?;
            packs.add(&name, &text)?;
        }
        Ok(packs)
    }

    fn add(&mut self, file: &str, text: &str) -> Result<(), PackError> {
        let invalid = |message: String| PackError::Invalid {
            file: file.to_owned(),
            message,
        };
        let de = &mut serde_json::Deserializer::from_str(text);
        let pack: Pack = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            match path.as_str() {
                "." => invalid(e.into_inner().to_string()),
                _ => invalid(format!("field `{path}`: {}", e.into_inner())),
            }
        })?;
        let valid_name = !pack.name.is_empty()
            && pack.name.len() <= 64
            && pack
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid_name {
            return Err(invalid(format!(
                "field `name`: `{}` must be 1-64 chars of [A-Za-z0-9._-]",
                pack.name
            )));
        }
        if pack.executor == ExecutorKind::Builtin {
            return Err(invalid("field `executor`: `builtin` packs need the built-in executor, which is not available yet; use `remote`".into()));
        }
        if self.0.contains_key(&pack.name) {
            return Err(invalid(format!(
                "field `name`: pack `{}` is declared twice",
                pack.name
            )));
        }
        self.0.insert(pack.name.clone(), pack);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Pack> {
        self.0.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Pack> {
        self.0.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_ship_the_external_remote_pack() {
        let packs = Packs::load("/nonexistent/packs", true).unwrap();
        assert_eq!(
            packs.get("external").unwrap().executor,
            ExecutorKind::Remote
        );
    }

    #[test]
    fn a_bad_pack_file_names_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.json"),
            r#"{"name": "x y", "executor": "remote"}"#,
        )
        .unwrap();
        let err = Packs::load(dir.path().to_str().unwrap(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.json") && err.contains("`name`"), "{err}");
        std::fs::write(
            dir.path().join("bad.json"),
            r#"{"name": "x", "executor": "shell"}"#,
        )
        .unwrap();
        let err = Packs::load(dir.path().to_str().unwrap(), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.json") && err.contains("executor"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_explicit_dir_is_an_error() {
        assert!(Packs::load("/nonexistent/packs", false).is_err());
    }
}
