//! One leased built-in job: workspace, inputs, steps in order, then
//! complete or fail, all through the store with the job's lease id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use super::step::{self, Outcome, Reporter};
use crate::artifacts::{self, NewArtifact, Source};
use crate::packs::Pack;
use crate::store::{Completion, Failure, LeasedJob, StoreError};
use crate::AppState;

pub async fn run(state: Arc<AppState>, tenant: String, leased: LeasedJob) {
    let Some(pack) = state.packs.get(&leased.pack).cloned() else {
        tracing::error!(pack = %leased.pack, "leased a job of an undeclared pack");
        return;
    };
    let correlation_id = match state.store.get_job(&tenant, &leased.job_id).await {
        Ok(job) => job.correlation_id,
        Err(_) => leased.job_id.clone(),
    };
    let mut reporter = Reporter {
        state: state.clone(),
        tenant,
        job_id: leased.job_id.clone(),
        lease_id: leased.lease_id.clone(),
        correlation_id,
        log_lines: 0,
    };
    let env = match input_env(&pack, &leased.inputs) {
        Ok(env) => env,
        Err(name) => {
            let message = format!("required input `{name}` is missing");
            return fail(&reporter, "missing_input", message, None, None).await;
        }
    };
    let workspace = match workspace(&state, &leased.job_id) {
        Ok(dir) => dir,
        Err(e) => {
            let message = format!("cannot create the workspace: {e}");
            return fail(&reporter, "workspace_unavailable", message, None, None).await;
        }
    };
    let total = pack.steps.len();
    for (index, s) in pack.steps.iter().enumerate() {
        let Some(first_line) = reporter.start_step(index, total, s).await else {
            return; // canceled (lease lost) before the step started
        };
        let outcome = step::run(&mut reporter, s, &workspace, &env).await;
        let range = (reporter.log_lines >= first_line).then_some((first_line, reporter.log_lines));
        let (code, message, exit_code) = match outcome {
            Outcome::Succeeded => continue,
            Outcome::LeaseLost => return,
            Outcome::Exited(code) => {
                let message = match code {
                    Some(c) => format!("step `{}` exited with code {c}", s.name),
                    None => format!("step `{}` was killed by a signal", s.name),
                };
                ("step_failed", message, code.map(i64::from))
            }
            Outcome::TimedOut => {
                let message = format!(
                    "step `{}` timed out after {}s; its process group was killed",
                    s.name, s.timeout_seconds
                );
                ("step_timeout", message, None)
            }
            Outcome::SpawnFailed(e) => {
                let message = format!("step `{}` could not start `{}`: {e}", s.name, s.run[0]);
                ("step_failed", message, Some(127))
            }
        };
        return fail(&reporter, code, message, range, exit_code).await;
    }
    let result = json!({"steps": total});
    let items = collect(&pack, &workspace, &result);
    let cfg = &state.config.artifacts;
    let staged = match artifacts::store_all(
        &cfg.dir,
        &reporter.tenant,
        &reporter.job_id,
        items,
        cfg.inline_max_bytes,
    )
    .await
    {
        Ok(staged) => staged,
        Err(e) => {
            let message = format!("cannot store the job's artifacts: {e}");
            return fail(&reporter, "artifacts_unavailable", message, None, None).await;
        }
    };
    let done = Completion {
        lease_id: reporter.lease_id.clone(),
        result: Some(result),
        correlation_id: reporter.correlation_id.clone(),
        artifacts: staged.artifacts.clone(),
    };
    let outcome = state
        .store
        .complete_job(&reporter.tenant, &reporter.job_id, &done)
        .await;
    // Canceled meanwhile (lease lost): the files go with the refusal.
    staged.settle(&outcome).await;
    match outcome {
        Ok(_) | Err(StoreError::LeaseLost) => {}
        Err(e) => {
            tracing::warn!(job = %reporter.job_id, error = %e, "completing a built-in job failed")
        }
    }
}

/// The `completion` artifact and the pack's declared artifacts (a missing
/// file is skipped by [`artifacts::store_all`] with a warning).
fn collect(pack: &Pack, workspace: &Path, result: &Value) -> Vec<NewArtifact> {
    let mut items = vec![NewArtifact {
        name: artifacts::COMPLETION.to_owned(),
        content_type: "application/json".to_owned(),
        source: Source::Bytes(result.to_string().into_bytes()),
    }];
    for decl in &pack.artifacts {
        if !artifacts::valid_name(&decl.name) || decl.name == artifacts::COMPLETION {
            tracing::warn!(pack = %pack.name, artifact = %decl.name, "artifact name not storable; skipped");
            continue;
        }
        let Some(path) = inside(workspace, &decl.path) else {
            tracing::warn!(pack = %pack.name, artifact = %decl.name, "artifact path leaves the workspace; skipped");
            continue;
        };
        items.push(NewArtifact {
            name: decl.name.clone(),
            content_type: decl
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            source: Source::File(path),
        });
    }
    items
}

/// `<workspace>/<relative>` through the checked join, when it exists and,
/// links resolved, is still inside the workspace (a step may leave a
/// symbolic link to anywhere). A missing file stays a missing artifact.
fn inside(workspace: &Path, relative: &str) -> Option<PathBuf> {
    let path = crate::paths::join_relative(workspace, relative).ok()?;
    match (path.canonicalize(), workspace.canonicalize()) {
        (Ok(real), Ok(root)) => real.starts_with(&root).then_some(real),
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Some(path),
        _ => None,
    }
}

/// Fail the job (not retryable: a built-in step fails the same way again).
async fn fail(
    reporter: &Reporter,
    code: &str,
    message: String,
    log_range: Option<(i64, i64)>,
    exit_code: Option<i64>,
) {
    let failure = Failure {
        lease_id: reporter.lease_id.clone(),
        retryable: false,
        code: code.to_owned(),
        message,
        log_range,
        exit_code,
        correlation_id: reporter.correlation_id.clone(),
    };
    let state = &reporter.state;
    match state
        .store
        .fail_job(&reporter.tenant, &reporter.job_id, &failure)
        .await
    {
        Ok(_) => {}
        Err(StoreError::LeaseLost) => {}
        Err(e) => {
            tracing::warn!(job = %reporter.job_id, error = %e, "failing a built-in job failed")
        }
    }
}

/// `INPUT_<NAME>` for each declared input: the job's value, else the
/// default; `Err(name)` when a required one has neither.
fn input_env(pack: &Pack, inputs: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for decl in &pack.inputs {
        let value = match inputs.get(&decl.name) {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => decl.default.clone(),
            Some(other) => Some(other.to_string()),
        };
        match value {
            Some(v) => {
                env.insert(format!("INPUT_{}", decl.name.to_ascii_uppercase()), v);
            }
            None if decl.required => return Err(decl.name.clone()),
            None => {}
        }
    }
    Ok(env)
}

/// A fresh `<WorkspaceDir>/<jobId>` (a retried attempt starts clean). It is
/// kept after the job for its declared artifacts.
fn workspace(state: &AppState, job_id: &str) -> std::io::Result<PathBuf> {
    let root = std::path::absolute(&state.config.executor.workspace_dir)?;
    let dir = crate::paths::join(&root, &[job_id])?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
