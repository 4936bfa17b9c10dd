//! Whose built-in job gets the next executor slot (SPEC §11, ADR 0025):
//! round robin across the tenants with queued built-in jobs, not the oldest
//! job overall, so one tenant's backlog delays only that tenant.

use std::collections::HashMap;

/// Served-order entries kept at most; beyond, those of tenants with
/// nothing queued or running are dropped (they would be served first
/// anyway, as never served).
const MAX_SERVED: usize = 4096;

/// The executor loop's view of who runs what. Owned by the loop alone.
#[derive(Debug, Default)]
pub struct Turns {
    running: HashMap<String, usize>,
    /// When each tenant last got a slot (a counter, not a clock).
    served: HashMap<String, u64>,
    seq: u64,
}

impl Turns {
    /// The index in `queued` (tenant, oldest queued job id) of the tenant
    /// to serve next: the fewest jobs running, then the one served longest
    /// ago (never served first), then the one whose oldest job has waited
    /// longest.
    pub fn pick(&self, queued: &[(String, String)]) -> Option<usize> {
        queued
            .iter()
            .enumerate()
            .min_by_key(|(_, (tenant, oldest))| {
                (
                    self.running.get(tenant).copied().unwrap_or(0),
                    self.served.get(tenant).copied().unwrap_or(0),
                    oldest.as_str(),
                )
            })
            .map(|(i, _)| i)
    }

    /// `tenant` got a slot.
    pub fn started(&mut self, tenant: &str) {
        self.seq += 1;
        *self.running.entry(tenant.to_owned()).or_default() += 1;
        self.served.insert(tenant.to_owned(), self.seq);
    }

    /// A job of `tenant` gave its slot back.
    pub fn finished(&mut self, tenant: &str) {
        if let Some(n) = self.running.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(tenant);
            }
        }
    }

    /// Bound the served map, keeping the tenants in `queued` or running.
    pub fn prune(&mut self, queued: &[(String, String)]) {
        if self.served.len() > MAX_SERVED {
            let running = &self.running;
            self.served
                .retain(|t, _| running.contains_key(t) || queued.iter().any(|(q, _)| q == t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(t, j)| (t.to_string(), j.to_string()))
            .collect()
    }

    #[test]
    fn a_tenant_with_fewer_running_jobs_goes_first() {
        let mut t = Turns::default();
        t.started("noisy");
        let queued = q(&[("noisy", "01A"), ("victim", "01Z")]);
        assert_eq!(t.pick(&queued), Some(1));
    }

    #[test]
    fn at_equal_load_the_tenant_served_longest_ago_goes_first() {
        let mut t = Turns::default();
        t.started("noisy");
        t.finished("noisy");
        // noisy's oldest job is older, but it had the last turn.
        let queued = q(&[("noisy", "01A"), ("victim", "01Z")]);
        assert_eq!(t.pick(&queued), Some(1));
        t.started("victim");
        t.finished("victim");
        assert_eq!(t.pick(&queued), Some(0), "then noisy again");
    }

    #[test]
    fn among_new_tenants_the_oldest_job_goes_first() {
        let t = Turns::default();
        let queued = q(&[("b", "01C"), ("a", "01B"), ("c", "01D")]);
        assert_eq!(t.pick(&queued), Some(1));
        assert_eq!(t.pick(&[]), None);
    }
}
