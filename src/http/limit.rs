//! A token bucket: the rate limit of the classification routes.
//!
//! One bucket for the whole server (a home daemon has a handful of clients; what is
//! protected is the CPU the live pipeline needs), so a few lines of pure code rather
//! than a rate-limiting crate.

/// Allows `capacity` requests at once and refills at `per_s` per second.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    capacity: f64,
    per_s: f64,
    tokens: f64,
    last_s: f64,
}

impl RateLimiter {
    /// `n` requests per minute, all of them available in a burst.
    pub fn per_minute(n: u32) -> RateLimiter {
        let n = n.max(1) as f64;
        RateLimiter {
            capacity: n,
            per_s: n / 60.0,
            tokens: n,
            last_s: 0.0,
        }
    }

    /// Takes one token at time `now_s` (seconds on any monotonic clock), or says how
    /// many seconds until one is free.
    pub fn take(&mut self, now_s: f64) -> Result<(), f64> {
        let dt = (now_s - self.last_s).max(0.0);
        self.last_s = self.last_s.max(now_s);
        self.tokens = (self.tokens + dt * self.per_s).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / self.per_s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate() {
        let mut l = RateLimiter::per_minute(3);
        assert!(l.take(0.0).is_ok());
        assert!(l.take(0.0).is_ok());
        assert!(l.take(0.1).is_ok());
        let wait = l.take(0.2).unwrap_err();
        assert!((wait - 19.9).abs() < 0.2, "{wait}");
        assert!(l.take(20.0).is_ok(), "one token back after 20 s");
        assert!(l.take(20.1).is_err());
        // A clock that goes backwards neither refills nor panics.
        assert!(l.take(5.0).is_err());
        // Never more than the capacity, however long the pause.
        for _ in 0..3 {
            assert!(l.take(10_000.0).is_ok());
        }
        assert!(l.take(10_000.0).is_err());
    }
}
