//! What the writer remembers of a tenant's pack: the durations of its last
//! successful jobs (`etaSeconds`) and its latest finished runs
//! (`lastKnownOutcome`), SPEC §4.3, ADR 0028.
//!
//! Each (tenant, pack) entry is read from the store once, inside the write
//! that first needs it, and then kept up to date from what the writer
//! commits, so deriving a signal costs no query. An entry is read again
//! after [`RELOAD_AFTER`]: another node's writer may have finished jobs of
//! the same pack meanwhile.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Successful jobs whose durations make the estimate.
pub const WINDOW: usize = 20;
/// Fewer samples than this: no estimate.
pub const MIN_SAMPLES: usize = 3;
/// Finished runs kept per entry: the latest one may be the asking run itself.
pub const OUTCOMES: usize = 2;
/// Age at which an entry is read from the store again.
const RELOAD_AFTER: Duration = Duration::from_secs(60);
/// Entries kept at most (past it, stale ones go first, then all of them:
/// they are read again when needed).
const MAX_ENTRIES: usize = 10_000;

/// A successful job: (job id, finished at ms, duration ms).
pub type Sample = (String, i64, i64);

/// A finished run of the pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub run_id: String,
    /// `succeeded`, `failed` or `canceled`.
    pub status: String,
    pub finished_at: i64,
}

/// One (tenant, pack)'s history, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackRecord {
    pub samples: Vec<Sample>,
    pub outcomes: Vec<Outcome>,
}

impl PackRecord {
    /// Median duration in ms of the samples, when there are enough.
    pub fn median_ms(&self) -> Option<i64> {
        if self.samples.len() < MIN_SAMPLES {
            return None;
        }
        let mut d: Vec<i64> = self.samples.iter().map(|s| s.2).collect();
        d.sort_unstable();
        let mid = d.len() / 2;
        Some(if d.len() % 2 == 1 {
            d[mid]
        } else {
            (d[mid - 1] + d[mid]) / 2
        })
    }

    /// The latest finished run other than `run_id`.
    pub fn last_other(&self, run_id: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.run_id != run_id)
    }

    fn add_sample(&mut self, sample: Sample) {
        if self.samples.iter().any(|s| s.0 == sample.0) {
            return;
        }
        self.samples.push(sample);
        self.samples.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
        self.samples.truncate(WINDOW);
    }

    fn add_outcome(&mut self, outcome: Outcome) {
        // A run finishes again after a retry: its latest outcome counts.
        self.outcomes.retain(|o| o.run_id != outcome.run_id);
        self.outcomes.push(outcome);
        self.outcomes
            .sort_by(|a, b| (b.finished_at, &b.run_id).cmp(&(a.finished_at, &a.run_id)));
        self.outcomes.truncate(OUTCOMES);
    }
}

/// What one write learned, applied to the history after its commit.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryFact {
    Succeeded {
        tenant: String,
        pack: String,
        sample: Sample,
    },
    RunFinished {
        tenant: String,
        pack: String,
        outcome: Outcome,
    },
}

/// The writer's per-(tenant, pack) history, shared by its lanes.
///
/// A `std` mutex: held only to copy an entry in or out, never across an
/// `.await` (the store read happens outside it).
#[derive(Debug, Default)]
pub struct PackHistory {
    entries: Mutex<HashMap<(String, String), (Instant, PackRecord)>>,
}

impl PackHistory {
    /// The entry, unless it was never read or is due to be read again.
    pub fn get(&self, tenant: &str, pack: &str) -> Option<PackRecord> {
        let entries = self.lock();
        let (at, record) = entries.get(&(tenant.to_owned(), pack.to_owned()))?;
        (at.elapsed() < RELOAD_AFTER).then(|| record.clone())
    }

    /// Keep what the store holds (read in a write that has not committed:
    /// facts committed meanwhile are merged, not lost).
    pub fn put(&self, tenant: &str, pack: &str, loaded: PackRecord) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _)| at.elapsed() < RELOAD_AFTER);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let key = (tenant.to_owned(), pack.to_owned());
        let mut record = loaded;
        if let Some((_, old)) = entries.get(&key) {
            for s in &old.samples {
                record.add_sample(s.clone());
            }
            for o in &old.outcomes {
                if !record.outcomes.iter().any(|r| r.run_id == o.run_id) {
                    record.add_outcome(o.clone());
                }
            }
        }
        entries.insert(key, (Instant::now(), record));
    }

    /// Apply what a committed write learned to the entries already read
    /// (others are read from the store, which now holds it, when needed).
    pub fn record(&self, facts: &[HistoryFact]) {
        if facts.is_empty() {
            return;
        }
        let mut entries = self.lock();
        for fact in facts {
            match fact {
                HistoryFact::Succeeded {
                    tenant,
                    pack,
                    sample,
                } => {
                    if let Some((_, r)) = entries.get_mut(&(tenant.clone(), pack.clone())) {
                        r.add_sample(sample.clone());
                    }
                }
                HistoryFact::RunFinished {
                    tenant,
                    pack,
                    outcome,
                } => {
                    if let Some((_, r)) = entries.get_mut(&(tenant.clone(), pack.clone())) {
                        r.add_outcome(outcome.clone());
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (Instant, PackRecord)>> {
        // A panic while holding this lock leaves plain data behind: use it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: i64, dur: i64) -> Sample {
        (format!("j{n}"), n, dur)
    }

    #[test]
    fn median_needs_three_samples_and_keeps_the_last_twenty() {
        let mut r = PackRecord::default();
        r.add_sample(sample(1, 1000));
        r.add_sample(sample(2, 3000));
        assert_eq!(r.median_ms(), None);
        r.add_sample(sample(3, 2000));
        assert_eq!(r.median_ms(), Some(2000));
        r.add_sample(sample(4, 5000));
        assert_eq!(r.median_ms(), Some(2500));
        for n in 5..40 {
            r.add_sample(sample(n, 10_000));
        }
        assert_eq!(r.samples.len(), WINDOW);
        assert_eq!(r.median_ms(), Some(10_000));
    }

    #[test]
    fn the_last_other_outcome_skips_the_asking_run() {
        let mut r = PackRecord::default();
        let outcome = |run: &str, status: &str, at| Outcome {
            run_id: run.into(),
            status: status.into(),
            finished_at: at,
        };
        r.add_outcome(outcome("a", "failed", 1));
        r.add_outcome(outcome("b", "succeeded", 2));
        r.add_outcome(outcome("c", "canceled", 3));
        assert_eq!(r.last_other("c").unwrap().run_id, "b");
        assert_eq!(r.last_other("x").unwrap().run_id, "c");
        // A retried run finishing again replaces its earlier outcome.
        r.add_outcome(outcome("b", "succeeded", 4));
        assert_eq!(r.last_other("x").unwrap().run_id, "b");
        assert_eq!(r.last_other("b").unwrap().run_id, "c");
    }
}
