//! What an attempt's result means for the delivery (SPEC §7.2, ADR 0014):
//! 2xx delivered, 410 gone, every other answer and every transport error a
//! retry on `Webhooks.RetryScheduleSeconds` with ±20 % jitter (or later, when
//! the receiver's `Retry-After` says so), failed once the schedule is spent.

use crate::store::WebhookOutcome;

/// The longest `Retry-After` honoured: a receiver cannot park a delivery
/// for longer than a day.
pub const MAX_RETRY_AFTER_MS: i64 = 24 * 3_600_000;

/// How one attempt ended, before policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The receiver answered.
    Answered {
        status: u16,
        /// `Retry-After`, raw.
        retry_after: Option<String>,
        /// `Location` of a redirect (not followed).
        location: Option<String>,
    },
    /// The SSRF guard refused the target, or the URL is unusable: final.
    Refused(String),
    /// DNS, connect, TLS, timeout: may work next time.
    Unreachable(String),
}

/// The outcome of attempt number `attempts` (1-based) ending as `attempt`.
/// `jitter` is uniform in `[0, 1)` (`fastrand::f64()` in production).
pub fn outcome(
    attempt: &Attempt,
    attempts: i64,
    schedule: &[u64],
    now_ms: i64,
    jitter: f64,
) -> WebhookOutcome {
    let (status, error, retry_after) = match attempt {
        Attempt::Answered { status, .. } if (200..300).contains(status) => {
            return WebhookOutcome::Delivered { status: *status };
        }
        Attempt::Answered { status: 410, .. } => return WebhookOutcome::Gone { status: 410 },
        Attempt::Refused(error) => {
            return WebhookOutcome::Failed {
                status: None,
                error: error.clone(),
            };
        }
        Attempt::Answered {
            status,
            retry_after,
            location,
        } => {
            let error = match location {
                Some(to) if (300..400).contains(status) => {
                    format!("receiver answered {status} (redirect to {to} not followed)")
                }
                _ => format!("receiver answered {status}"),
            };
            let after = retry_after
                .as_deref()
                .and_then(|v| retry_after_ms(v, now_ms));
            (Some(*status), error, after)
        }
        Attempt::Unreachable(error) => (None, error.clone(), None),
    };
    let step = usize::try_from(attempts - 1).unwrap_or(0);
    let Some(base) = schedule.get(step) else {
        return WebhookOutcome::Failed {
            status,
            error: format!("{error}; gave up after {attempts} attempts"),
        };
    };
    let backoff = (*base as f64 * 1000.0 * (0.8 + 0.4 * jitter)) as i64;
    let delay = backoff.max(retry_after.unwrap_or(0));
    WebhookOutcome::Retry {
        at_ms: now_ms + delay,
        status,
        error,
    }
}

/// `Retry-After` as a delay from `now_ms`: delta-seconds or an HTTP date,
/// capped at [`MAX_RETRY_AFTER_MS`]; `None` when unparsable.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        Err(_) => {
            // IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) is RFC 2822 syntax.
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.timestamp_millis() - now_ms).max(0)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: &[u64] = &[1, 5, 30];
    const NOW: i64 = 1_000_000;

    fn answered(status: u16) -> Attempt {
        Attempt::Answered {
            status,
            retry_after: None,
            location: None,
        }
    }

    fn retry_delay(o: WebhookOutcome) -> i64 {
        match o {
            WebhookOutcome::Retry { at_ms, .. } => at_ms - NOW,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn two_hundreds_deliver_and_410_is_gone() {
        for s in [200, 201, 204, 299] {
            assert_eq!(
                outcome(&answered(s), 1, SCHEDULE, NOW, 0.5),
                WebhookOutcome::Delivered { status: s }
            );
        }
        assert_eq!(
            outcome(&answered(410), 1, SCHEDULE, NOW, 0.5),
            WebhookOutcome::Gone { status: 410 }
        );
    }

    #[test]
    fn other_answers_and_errors_follow_the_schedule_with_jitter() {
        for a in [
            answered(500),
            answered(404),
            answered(302),
            Attempt::Unreachable("timed out".into()),
        ] {
            assert_eq!(retry_delay(outcome(&a, 1, SCHEDULE, NOW, 0.5)), 1000);
            assert_eq!(retry_delay(outcome(&a, 2, SCHEDULE, NOW, 0.0)), 4000);
            assert_eq!(
                retry_delay(outcome(&a, 3, SCHEDULE, NOW, 0.999_999)),
                35_999
            );
        }
    }

    #[test]
    fn the_schedule_spent_means_failed() {
        match outcome(&answered(503), 4, SCHEDULE, NOW, 0.5) {
            WebhookOutcome::Failed { status, error } => {
                assert_eq!(status, Some(503));
                assert!(error.contains("gave up after 4 attempts"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome(&answered(500), 1, &[], NOW, 0.5),
            WebhookOutcome::Failed { .. }
        ));
    }

    #[test]
    fn a_refusal_is_final() {
        let o = outcome(&Attempt::Refused("no".into()), 1, SCHEDULE, NOW, 0.5);
        assert_eq!(
            o,
            WebhookOutcome::Failed {
                status: None,
                error: "no".into()
            }
        );
    }

    #[test]
    fn retry_after_wins_only_when_later() {
        let with = |v: &str| Attempt::Answered {
            status: 503,
            retry_after: Some(v.into()),
            location: None,
        };
        assert_eq!(
            retry_delay(outcome(&with("7"), 1, SCHEDULE, NOW, 0.5)),
            7000
        );
        assert_eq!(
            retry_delay(outcome(&with("0"), 2, SCHEDULE, NOW, 0.5)),
            5000
        );
        assert_eq!(
            retry_delay(outcome(&with("soon"), 1, SCHEDULE, NOW, 0.5)),
            1000
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("1994-11-06T08:49:30Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(retry_after_ms("120", now), Some(120_000));
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(7000)
        );
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(0)
        );
        assert_eq!(retry_after_ms("99999999999", now), Some(MAX_RETRY_AFTER_MS));
        assert_eq!(retry_after_ms("-1", now), None);
    }

    #[test]
    fn a_redirect_names_its_location() {
        let a = Attempt::Answered {
            status: 302,
            retry_after: None,
            location: Some("http://elsewhere/".into()),
        };
        match outcome(&a, 1, SCHEDULE, NOW, 0.5) {
            WebhookOutcome::Retry { status, error, .. } => {
                assert_eq!(status, Some(302));
                assert!(error.contains("not followed") && error.contains("elsewhere"));
            }
            other => panic!("{other:?}"),
        }
    }
}
