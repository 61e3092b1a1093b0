//! The per-account rate limit: a token bucket per account, checked after authentication.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket per account: `rate` requests per second on average, bursts up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter { rate, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one token, or say how many seconds until one is available.
    pub fn check(&self, key: &str) -> Result<(), f64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_per_account() {
        let l = RateLimiter::new(10.0, 3.0);
        assert!((0..3).all(|_| l.check("a").is_ok()));
        let wait = l.check("a").unwrap_err();
        assert!(wait > 0.0 && wait <= 0.1 + 1e-9, "{wait}");
        assert!(l.check("b").is_ok(), "accounts have their own buckets");
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(l.check("a").is_ok());
        assert!(RateLimiter::new(0.0, 1.0).check("x").is_ok(), "rate 0 disables the limit");
    }
}
