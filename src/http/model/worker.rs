//! The bodies of the remote worker routes (camelCase; a job itself is
//! snake_case, as on `/jobs`).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::job::Job;
use crate::store;

/// `POST {prefix}/workers/lease` answer: empty when nothing is available.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseGrant {
    pub jobs: Vec<LeasedJob>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeasedJob {
    pub job_id: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    pub pack: String,
    #[schema(value_type = Object)]
    pub inputs: Value,
    /// Pass back on progress, complete and fail.
    pub lease_id: String,
    #[schema(format = DateTime)]
    pub lease_until: String,
    pub attempt: i64,
}

impl From<store::LeasedJob> for LeasedJob {
    fn from(job: store::LeasedJob) -> LeasedJob {
        LeasedJob {
            job_id: job.job_id,
            run_id: job.run_id,
            pack: job.pack,
            inputs: job.inputs,
            lease_id: job.lease_id,
            lease_until: job.lease_until,
            attempt: job.attempt,
        }
    }
}

/// The job after a progress report, with the (extended) lease's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeasedJobState {
    #[serde(flatten)]
    pub job: Job,
    #[serde(rename = "leaseId")]
    #[schema(required = true)]
    pub lease_id: Option<String>,
}

impl From<&store::JobRecord> for LeasedJobState {
    fn from(job: &store::JobRecord) -> LeasedJobState {
        LeasedJobState {
            job: Job::new(job),
            lease_id: job.lease_id.clone(),
        }
    }
}

/// `stdout` or `stderr`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStreamName {
    Stdout,
    Stderr,
}
