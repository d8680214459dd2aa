//! The legacy service-account token cleaner (reference §6.3) as a pure decision:
//! unused for a period → labelled `kubernetes.io/legacy-token-invalid-since`;
//! invalid for a further period → deleted. Secrets a pod references are never
//! touched (the caller checks that with `secret_refs`).

use std::time::{Duration, SystemTime};

use crate::clock::utc_date;

pub const LAST_USED_LABEL: &str = "kubernetes.io/legacy-token-last-used";
pub const INVALID_SINCE_LABEL: &str = "kubernetes.io/legacy-token-invalid-since";
/// Kubernetes' default `--legacy-service-account-token-clean-up-period`.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the cleaner knows of one candidate Secret (already filtered to type
/// `kubernetes.io/service-account-token`, auto-generated — listed in its live
/// service account's `secrets` — and referenced by no pod).
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub created: SystemTime,
    pub deleting: bool,
    pub last_used: Option<&'a str>,
    pub invalid_since: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Set the invalid-since label to this date.
    MarkInvalid(String),
    Delete,
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Midnight UTC of a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<SystemTime> {
    if !is_date(s) {
        return None;
    }
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: i64 = s.get(5..7)?.parse().ok()?;
    let d: i64 = s.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days.checked_mul(86_400)?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Whether the cleaner may act at all: only once `tracking_since + 1 day + period`
/// has passed, so no token is called unused before its use could be tracked.
pub fn active(tracking_since: SystemTime, period: Duration, now: SystemTime) -> bool {
    tracking_since
        .checked_add(Duration::from_secs(86_400) + period)
        .is_some_and(|t| now >= t)
}

/// The decision for one candidate.
pub fn decide(c: &Candidate<'_>, period: Duration, now: SystemTime) -> Action {
    let Some(cutoff) = now.checked_sub(period) else {
        return Action::Nothing;
    };
    if c.deleting || c.created >= cutoff {
        return Action::Nothing;
    }
    let cutoff_date = utc_date(cutoff);
    match c.last_used {
        // A malformed label: leave the secret alone, as Kubernetes does.
        Some(d) if !is_date(d) => return Action::Nothing,
        Some(d) if d >= cutoff_date.as_str() => return Action::Nothing,
        _ => {}
    }
    match c.invalid_since {
        Some(d) if is_date(d) => {
            if d < cutoff_date.as_str() {
                Action::Delete
            } else {
                Action::Nothing
            }
        }
        // Missing or malformed: mark it today, and stop there for this pass.
        _ => Action::MarkInvalid(utc_date(now)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    // 2026-11-28T00:00:00Z
    const NOW: u64 = 1_795_824_000;

    fn t(days_ago: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW - days_ago * DAY)
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(t(0)), "2026-11-28");
        assert_eq!(parse_date("2026-11-28"), Some(t(0)));
        assert_eq!(
            parse_date("2024-02-29").map(utc_date).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(parse_date("2026-13-01"), None);
        assert!(is_date("2025-01-31"));
        for bad in ["2025-1-31", "yesterday", "2025/01/31", ""] {
            assert!(!is_date(bad));
        }
    }

    #[test]
    fn table() {
        let period = Duration::from_secs(365 * DAY);
        let cases: Vec<(&str, Candidate, Action)> = vec![
            (
                "young secret",
                Candidate {
                    created: t(10),
                    deleting: false,
                    last_used: None,
                    invalid_since: None,
                },
                Action::Nothing,
            ),
            (
                "being deleted",
                Candidate {
                    created: t(800),
                    deleting: true,
                    last_used: None,
                    invalid_since: None,
                },
                Action::Nothing,
            ),
            (
                "used recently",
                Candidate {
                    created: t(800),
                    deleting: false,
                    last_used: Some("2026-11-01"),
                    invalid_since: None,
                },
                Action::Nothing,
            ),
            (
                "used exactly at the cutoff date",
                Candidate {
                    created: t(800),
                    deleting: false,
                    last_used: Some("2025-11-28"),
                    invalid_since: None,
                },
                Action::Nothing,
            ),
            (
                "used the day before the cutoff",
                Candidate {
                    created: t(800),
                    deleting: false,
                    last_used: Some("2025-11-27"),
                    invalid_since: None,
                },
                Action::MarkInvalid("2026-11-28".into()),
            ),
            (
                "never used",
                Candidate {
                    created: t(800),
                    deleting: false,
                    last_used: None,
                    invalid_since: None,
                },
                Action::MarkInvalid("2026-11-28".into()),
            ),
            (
                "malformed last-used",
                Candidate {
                    created: t(800),
                    deleting: false,
                    last_used: Some("soon"),
                    invalid_since: None,
                },
                Action::Nothing,
            ),
            (
                "malformed invalid-since is re-marked",
                Candidate {
                    created: t(800),
                    deleting: false,
                    last_used: None,
                    invalid_since: Some("x"),
                },
                Action::MarkInvalid("2026-11-28".into()),
            ),
            (
                "invalid for less than a period",
                Candidate {
                    created: t(800),
                    deleting: false,
                    last_used: None,
                    invalid_since: Some("2026-01-01"),
                },
                Action::Nothing,
            ),
            (
                "invalid for more than a period",
                Candidate {
                    created: t(800),
                    deleting: false,
                    last_used: None,
                    invalid_since: Some("2025-11-27"),
                },
                Action::Delete,
            ),
        ];
        for (name, c, want) in cases {
            assert_eq!(decide(&c, period, t(0)), want, "{name}");
        }
    }

    #[test]
    fn waits_for_tracking_to_cover_a_period() {
        let period = Duration::from_secs(365 * DAY);
        assert!(!active(t(365), period, t(0)), "needs one more day");
        assert!(active(t(366), period, t(0)));
    }
}
