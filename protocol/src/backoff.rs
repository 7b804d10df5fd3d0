//! The one retry rule of every reconnecting edge (validator peer links, a gateway's
//! connections to validators, its MQTT broker): exponential backoff between two bounds,
//! reset by a success. Sans-IO: it says how long to wait; the caller sleeps.

use std::time::Duration;

/// Exponential backoff: `min`, 2·`min`, 4·`min`, … capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and doubling up to `max` (`max` ≥ `min`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), next: min }
    }

    /// The delay before the next attempt; each call doubles the following one, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
