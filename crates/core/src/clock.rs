//! Time is passed in, never read inside the rules: services hold a `Clock`, tests a
//! `FixedClock`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::token::unix_seconds;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place Badge reads the wall clock; everything else is passed a Clock"
    )]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct FixedClock(Mutex<SystemTime>);

impl FixedClock {
    pub fn at_unix(secs: u64) -> Self {
        FixedClock(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        ))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Microseconds since the Unix epoch (the store's time unit). Times before the epoch
/// clamp to 0.
pub fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn from_unix_micros(us: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// prost `Timestamp` for a `SystemTime`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let us = unix_micros(t);
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// `YYYY-MM-DD`, the UTC date of `t` (the legacy-token labels' value, §6.2).
pub fn utc_date(t: SystemTime) -> String {
    date_of_day(unix_seconds(t).div_euclid(86_400))
}

/// Whether a legacy token's last-used label must be set to today: Kubernetes patches
/// it only when it is neither today nor tomorrow (UTC) (§6.2).
pub fn last_used_needs_update(last_used: Option<&str>, now: SystemTime) -> bool {
    let day = unix_seconds(now).div_euclid(86_400);
    let value = last_used.unwrap_or("");
    value != date_of_day(day) && value != date_of_day(day.saturating_add(1))
}

fn date_of_day(days: i64) -> String {
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to (year, month 1–12, day 1–31) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`). Callers pass seconds / 86 400 of an
/// i64, far from overflowing.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const NOW: i64 = 1_700_000_000;

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(utc_date(at(86_399)), "1970-01-01");
        assert_eq!(utc_date(at(86_400)), "1970-01-02");
        assert_eq!(utc_date(at(951_782_400)), "2000-02-29");
        assert_eq!(utc_date(at(951_868_800)), "2000-03-01");
        assert_eq!(utc_date(at(4_107_542_400)), "2100-03-01");
        assert_eq!(utc_date(UNIX_EPOCH - Duration::from_secs(1)), "1969-12-31");
        assert!(!last_used_needs_update(Some("2023-11-15"), at(NOW)));
        // Just before midnight UTC, today and tomorrow.
        let late = at(1_700_006_399);
        assert_eq!(utc_date(late), "2023-11-14");
        assert!(!last_used_needs_update(Some("2023-11-15"), late));
        assert!(last_used_needs_update(
            Some("2023-11-15"),
            at(1_700_006_400 + 86_400)
        ));
    }
}
