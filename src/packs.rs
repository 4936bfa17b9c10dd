//! Pack definitions (`Executor.PacksDir`, one JSON file per pack), validated
//! at start-up: a bad file stops start-up with its name and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The packs shipped in `config/packs/`, compiled in for when the binary runs
/// away from its source tree with the default `PacksDir`.
const EMBEDDED: &[(&str, &str)] = &[
    ("demo.json", include_str!("../config/packs/demo.json")),
    (
        "external.json",
        include_str!("../config/packs/external.json"),
    ),
];

/// Default per-step timeout.
const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

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
    /// Declared inputs; a built-in step sees each as `INPUT_<NAME>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputDecl>,
    /// The declared steps, in order: run by the built-in executor, or
    /// (remote packs, names only) the plan a worker's `stepIndex` refers to.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Declared artifact paths (relative to the job's workspace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactDecl>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDecl {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// Required for built-in steps; optional for a remote pack's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stage: String,
    /// argv: never passed through a shell by the executor. Built-in steps
    /// only: a remote pack's steps are run by its worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactDecl {
    pub name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// `[A-Za-z][A-Za-z0-9_]*`
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Semantic checks serde cannot express; `Err((field path, message))`.
fn check(pack: &Pack) -> Result<(), (String, String)> {
    let err = |path: String, msg: &str| Err((path, msg.to_owned()));
    let mut seen = Vec::new();
    for (i, input) in pack.inputs.iter().enumerate() {
        if !is_identifier(&input.name) || input.name.len() > 64 {
            return err(
                format!("inputs[{i}].name"),
                "must match [A-Za-z][A-Za-z0-9_]* (at most 64 chars)",
            );
        }
        let upper = input.name.to_ascii_uppercase();
        if seen.contains(&upper) {
            return err(format!("inputs[{i}].name"), "is declared twice");
        }
        seen.push(upper);
    }
    if pack.executor == ExecutorKind::Builtin && pack.steps.is_empty() {
        return err("steps".into(), "a `builtin` pack needs at least one step");
    }
    for (i, step) in pack.steps.iter().enumerate() {
        if step.name.trim().is_empty() || step.name.len() > 128 {
            return err(format!("steps[{i}].name"), "must be 1-128 chars");
        }
        if pack.executor == ExecutorKind::Remote {
            // A remote step is a name in the plan (and an optional stage):
            // its worker runs it, so there is nothing to run here.
            if !step.run.is_empty() || !step.env.is_empty() {
                return err(
                    format!("steps[{i}].run"),
                    "a `remote` pack's steps are run by its worker: declare `name` (and `stage`), not `run` or `env`",
                );
            }
            if step.stage.len() > 128 {
                return err(format!("steps[{i}].stage"), "must be at most 128 chars");
            }
            continue;
        }
        if step.stage.trim().is_empty() || step.stage.len() > 128 {
            return err(format!("steps[{i}].stage"), "must be 1-128 chars");
        }
        if step.run.first().is_none_or(|p| p.is_empty()) {
            return err(
                format!("steps[{i}].run"),
                "must be a non-empty argv whose first element names the program",
            );
        }
        if !(1..=86_400).contains(&step.timeout_seconds) {
            return err(
                format!("steps[{i}].timeout_seconds"),
                "is out of range; allowed: 1..=86400",
            );
        }
        for key in step.env.keys() {
            if !is_identifier(key) && !key.starts_with('_') {
                return err(
                    format!("steps[{i}].env.{key}"),
                    "variable names must match [A-Za-z_][A-Za-z0-9_]*",
                );
            }
        }
    }
    let mut names = Vec::new();
    for (i, a) in pack.artifacts.iter().enumerate() {
        if a.name.is_empty() || names.contains(&&a.name) {
            return err(
                format!("artifacts[{i}].name"),
                "must be non-empty and unique",
            );
        }
        names.push(&a.name);
        let path = Path::new(&a.path);
        let escapes = path.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if a.path.is_empty() || escapes {
            return err(
                format!("artifacts[{i}].path"),
                "must be a relative path inside the workspace (no `..`, not absolute)",
            );
        }
    }
    Ok(())
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

/// Pack name → its declared step names, in order. Read by the store's
/// lifecycle (which knows no pack files) to name steps and to report the
/// steps a failed or canceled job never reached.
#[derive(Debug, Clone, Default)]
pub struct DeclaredSteps(BTreeMap<String, Vec<String>>);

impl DeclaredSteps {
    /// No pack declares any step.
    pub const NONE: DeclaredSteps = DeclaredSteps(BTreeMap::new());

    /// The declared step names of `pack` (none for an unknown pack).
    pub fn of(&self, pack: &str) -> &[String] {
        self.0.get(pack).map_or(&[], Vec::as_slice)
    }
}

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
        check(&pack).map_err(|(path, msg)| invalid(format!("field `{path}`: {msg}")))?;
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

    /// Each pack's declared step names, in order (SPEC §5.1: the plan of a
    /// pack run, and the steps reported `skipped` after a failure).
    pub fn declared_steps(&self) -> DeclaredSteps {
        DeclaredSteps(
            self.0
                .values()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.steps.iter().map(|s| s.name.clone()).collect(),
                    )
                })
                .collect(),
        )
    }

    /// Names of the packs run by the built-in executor.
    pub fn builtin(&self) -> Vec<String> {
        self.0
            .values()
            .filter(|p| p.executor == ExecutorKind::Builtin)
            .map(|p| p.name.clone())
            .collect()
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
    fn embedded_defaults_ship_the_demo_builtin_pack() {
        let packs = Packs::load("/nonexistent/packs", true).unwrap();
        let demo = packs.get("demo").unwrap();
        assert_eq!(demo.executor, ExecutorKind::Builtin);
        assert!(demo.steps.len() >= 3);
        assert_eq!(demo.artifacts[0].path, "out/report.txt");
        assert_eq!(packs.builtin(), vec!["demo".to_owned()]);
        let shipped = Packs::load(concat!(env!("CARGO_MANIFEST_DIR"), "/config/packs"), false);
        assert!(shipped.unwrap().get("demo").is_some());
    }

    fn load_one(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.json"), text).unwrap();
        match Packs::load(dir.path().to_str().unwrap(), false) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builtin_packs_are_validated_field_by_field() {
        let ok = r#"{"name":"b","executor":"builtin","inputs":[{"name":"who","default":"x"}],
            "steps":[{"name":"s","stage":"one","run":["echo","hi"],"env":{"A":"1"}}],
            "artifacts":[{"name":"r","path":"out/r.txt","content_type":"text/plain"}]}"#;
        assert_eq!(load_one(ok), "");
        for (bad, field) in [
            (r#"{"name":"b","executor":"builtin"}"#, "`steps`"),
            (
                r#"{"name":"b","executor":"builtin","steps":[{"name":"s","stage":"x","run":[]}]}"#,
                "`steps[0].run`",
            ),
            (
                r#"{"name":"b","executor":"builtin","steps":[{"name":"s","stage":"x","run":["a"],"timeout_seconds":0}]}"#,
                "`steps[0].timeout_seconds`",
            ),
            (
                r#"{"name":"b","executor":"builtin","steps":[{"name":"s","stage":"x","run":["a"],"shell":true}]}"#,
                "steps[0]",
            ),
            (
                r#"{"name":"b","executor":"remote","inputs":[{"name":"1x"}]}"#,
                "`inputs[0].name`",
            ),
            (
                r#"{"name":"b","executor":"remote","artifacts":[{"name":"a","path":"../etc/passwd"}]}"#,
                "`artifacts[0].path`",
            ),
            (
                r#"{"name":"b","executor":"remote","artifacts":[{"name":"a","path":"/etc/passwd"}]}"#,
                "`artifacts[0].path`",
            ),
            (
                r#"{"name":"b","executor":"remote","steps":[{"name":"s","stage":"x","run":["a"]}]}"#,
                "`steps[0].run`",
            ),
            (
                r#"{"name":"b","executor":"builtin","steps":[{"name":"s","run":["a"]}]}"#,
                "`steps[0].stage`",
            ),
        ] {
            let err = load_one(bad);
            assert!(
                err.contains("p.json") && err.contains(field),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn remote_packs_declare_step_names() {
        let ok = r#"{"name":"r","executor":"remote","steps":[{"name":"fetch"},{"name":"build","stage":"compile"}]}"#;
        assert_eq!(load_one(ok), "");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.json"), ok).unwrap();
        let packs = Packs::load(dir.path().to_str().unwrap(), false).unwrap();
        let steps = packs.declared_steps();
        assert_eq!(steps.of("r"), ["fetch".to_owned(), "build".to_owned()]);
        assert!(steps.of("nope").is_empty());
    }

    #[test]
    fn a_missing_explicit_dir_is_an_error() {
        assert!(Packs::load("/nonexistent/packs", false).is_err());
    }
}
