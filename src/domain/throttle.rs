//! The brute-force rule, as data both stores apply the same way: after `max_failures` wrong
//! passwords or codes within `window`, the account is locked for a delay that starts at
//! `first_lockout` and doubles with each lockout, up to `max_lockout`.

use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRule {
    pub max_failures: u32,
    pub window: Duration,
    pub first_lockout: Duration,
    pub max_lockout: Duration,
}

/// One account's failure record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    pub failures: u32,
    pub window_start: DateTime<Utc>,
    pub locked_until: Option<DateTime<Utc>>,
    pub lockouts: u32,
}

impl FailureRule {
    /// The record after one more failure at `now`.
    pub fn fail(&self, previous: Option<Lockout>, now: DateTime<Utc>) -> Lockout {
        let mut record = previous.unwrap_or(Lockout {
            failures: 0,
            window_start: now,
            locked_until: None,
            lockouts: 0,
        });
        if now >= record.window_start + self.window {
            record.failures = 0;
            record.window_start = now;
        }
        record.failures += 1;
        if record.failures >= self.max_failures {
            record.lockouts += 1;
            let doublings = record.lockouts.saturating_sub(1).min(20);
            let delay = (self.first_lockout * 2i32.pow(doublings)).min(self.max_lockout);
            record.locked_until = Some(now + delay);
            record.failures = 0;
            record.window_start = now;
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> FailureRule {
        FailureRule {
            max_failures: 5,
            window: Duration::minutes(15),
            first_lockout: Duration::minutes(1),
            max_lockout: Duration::minutes(15),
        }
    }

    #[test]
    fn the_fifth_failure_locks_and_each_lockout_doubles_up_to_the_cap() {
        let now = Utc::now();
        let mut record = None;
        for _ in 0..4 {
            record = Some(rule().fail(record, now));
        }
        assert_eq!(record.unwrap().locked_until, None);
        let mut delays = Vec::new();
        for _ in 0..6 {
            for _ in 0..5 {
                record = Some(rule().fail(record, now));
            }
            delays.push(record.unwrap().locked_until.unwrap() - now);
        }
        let minutes: Vec<i64> = delays.iter().map(|d| d.num_minutes()).collect();
        // 4 failures before the loop + 5 → first lockout; then every 5 more.
        assert_eq!(minutes[0], 1);
        assert!(minutes.windows(2).all(|w| w[1] >= w[0]), "{minutes:?}");
        assert_eq!(*minutes.last().unwrap(), 15, "capped: {minutes:?}");
    }

    #[test]
    fn failures_outside_the_window_start_over() {
        let now = Utc::now();
        let mut record = None;
        for _ in 0..4 {
            record = Some(rule().fail(record, now));
        }
        let later = rule().fail(record, now + Duration::minutes(16));
        assert_eq!(later.failures, 1);
        assert_eq!(later.locked_until, None);
    }
}
