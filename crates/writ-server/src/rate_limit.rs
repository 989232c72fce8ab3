//! Per-peer rate limit for attestation: a token bucket per source IP address.
//!
//! Invariant: memory stays bounded whatever peers do: past 10,000 tracked addresses, those idle
//! for a minute are forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::state::unpoison;

/// Most addresses tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

/// One address's bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by peer address: `rate` per second, bursts of five times as many.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` attempts per address (burst: five times as many).
    pub(crate) fn new(per_second: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// True when `ip` may go ahead now (and takes one token).
    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        let mut m = self.buckets.lock().unwrap_or_else(unpoison);
        let now = Instant::now();
        if m.len() > MAX_TRACKED {
            // Forget idle peers so the map stays bounded.
            m.retain(|_, b| now.duration_since(b.at).as_secs() < 60);
        }
        let burst = self.rate * 5.0;
        let b = m.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_address_is_refused_and_others_are_not() {
        let l = RateLimiter::new(2);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        assert!((0..10).all(|_| l.allow(a)), "burst of 5x the rate");
        assert!(!l.allow(a));
        assert!(l.allow(b));
    }
}
