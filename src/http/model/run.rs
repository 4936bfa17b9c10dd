//! The bodies of the run routes (camelCase).

use runsignal_actors::Envelope;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::{rfc3339, RunRecord};

/// A run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    #[schema(format = "uuid")]
    pub run_id: String,
    #[schema(required = true)]
    pub name: Option<String>,
    /// Free-form labels.
    #[schema(value_type = Object)]
    pub labels: Value,
    #[schema(value_type = RunStatus)]
    pub status: String,
    /// Seq of the run's latest timeline event.
    pub last_seq: i64,
    #[schema(format = DateTime, example = "2026-11-22T08:00:10.123Z")]
    pub created_at: String,
    #[schema(format = DateTime, example = "2026-11-22T08:00:10.123Z")]
    pub updated_at: String,
}

impl From<&RunRecord> for Run {
    fn from(run: &RunRecord) -> Run {
        Run {
            run_id: run.run_id.clone(),
            name: run.name.clone(),
            labels: serde_json::from_str(&run.labels)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            status: run.status.clone(),
            last_seq: run.last_seq,
            created_at: rfc3339(run.created_at),
            updated_at: rfc3339(run.updated_at),
        }
    }
}

/// A run's status (also the `?status=` filter of the runs list).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
    /// Cursor for the next page, or null on the last page.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// A page of the run's event envelopes, in seq order. Serialized as a
/// struct (never through a `Value`): each envelope keeps the field order it
/// was stored and hashed with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    #[schema(value_type = Vec<EventEnvelope>)]
    pub events: Vec<Envelope>,
    /// Seq to pass as `after` for the next page, or null on the last page
    /// (also when it holds exactly `limit` events).
    #[schema(required = true)]
    pub next: Option<u64>,
}

/// The schema of [`Envelope`] (SPEC §6), an immutable timeline event.
///
/// The actors crate knows nothing of HTTP or OpenAPI, so its type cannot
/// derive the schema; this one stands in for it, and a test checks that the
/// two have the same fields.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    /// ULID.
    pub event_id: String,
    /// `runsignal.event.v1`.
    pub schema_version: String,
    /// E.g. `run.created`, `job.queued`, `job.progress`, `signal.changed`,
    /// `run.completed`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub tenant_id: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    #[schema(required = true)]
    pub job_id: Option<String>,
    /// Per-run sequence number: 1, 2, 3, … without gaps.
    pub seq: u64,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    pub correlation_id: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    /// `sha256:<hex>` over the RFC 8785 canonical JSON of the envelope
    /// without `hash`.
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::PartialSchema;

    use super::*;

    #[test]
    fn the_documented_envelope_has_the_envelopes_fields() {
        let schema = serde_json::to_value(EventEnvelope::schema()).unwrap();
        let documented: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let envelope = Envelope {
            event_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            schema_version: "runsignal.event.v1".into(),
            event_type: "run.created".into(),
            tenant_id: "acme".into(),
            run_id: "3f2504e0-4f89-11d3-9a0c-0305e82c3301".into(),
            job_id: None,
            seq: 1,
            occurred_at: "2026-11-22T08:00:10.123Z".into(),
            correlation_id: "c".into(),
            payload: serde_json::json!({}),
            hash: "sha256:00".into(),
        };
        let served = serde_json::to_value(&envelope).unwrap();
        let served: BTreeSet<&str> = served
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(documented, served);
    }
}
