//! Time, injectable. Every decision that depends on time (trust, breaker
//! cooldowns, spend windows) reads it through [`Clock`], so tests and the
//! daemon's `--fake-clock-ms` mode can move time by hand.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Moves a manual clock forward; `false` for real clocks, which cannot
    /// be moved.
    fn advance(&self, _ms: u64) -> bool {
        false
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now_ms: AtomicU64::new(start_ms),
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn advance(&self, ms: u64) -> bool {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
        true
    }
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, to the second
/// (`2026-12-04T23:27:21Z`); `None` when out of range.
pub fn rfc3339(ms: u64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .replace_nanosecond(0)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        assert!(clock.advance(500));
        assert_eq!(clock.now_ms(), 1_500);
        assert!(!SystemClock.advance(1));
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
    }

    #[test]
    fn times_print_as_rfc_3339_seconds() {
        assert_eq!(
            rfc3339(1_700_000_000_999).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
    }
}
