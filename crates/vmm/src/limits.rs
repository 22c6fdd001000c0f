//! Rate limits of disks and network interfaces: the token buckets of
//! [`devices::rate_limiter`], as the command line (`bw=`, `iops=`, `rx_bw=` ...) and
//! Firecracker's API (`rate_limiter`, `rx_rate_limiter`, `tx_rate_limiter`) give them.

use std::sync::{Arc, Mutex};

use api::models;
pub use devices::rate_limiter::{
    BucketChange, BucketConfig as Bucket, LimiterConfig as Limits, RateLimiter,
};

/// A limiter the VMM shares with a device's workers.
pub type SharedLimiter = Arc<Mutex<RateLimiter>>;

/// A new shared limiter.
pub fn shared(limits: Limits) -> std::io::Result<SharedLimiter> {
    Ok(Arc::new(Mutex::new(RateLimiter::new(limits)?)))
}

fn bucket(b: &models::TokenBucket) -> Option<Bucket> {
    (b.size > 0 && b.refill_time > 0).then_some(Bucket {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    })
}

/// The limits of an API rate limiter body (a bucket of size or refill time 0 is no limit,
/// Firecracker's rule).
pub fn from_model(r: &Option<models::RateLimiter>) -> Limits {
    match r {
        None => Limits::default(),
        Some(r) => Limits {
            bandwidth: r.bandwidth.as_ref().and_then(bucket),
            ops: r.ops.as_ref().and_then(bucket),
        },
    }
}

/// What a `PATCH` body changes: a bucket left out is kept, a bucket of size or refill time
/// 0 is removed, any other replaces it.
pub fn changes_from_model(r: &models::RateLimiter) -> (BucketChange, BucketChange) {
    let change = |b: &Option<models::TokenBucket>| match b {
        None => BucketChange::Keep,
        Some(b) => bucket(b).map_or(BucketChange::Remove, BucketChange::Set),
    };
    (change(&r.bandwidth), change(&r.ops))
}

/// `limits` after `changes`.
pub fn apply(limits: Limits, (bw, ops): (BucketChange, BucketChange)) -> Limits {
    let one = |now: Option<Bucket>, c: BucketChange| match c {
        BucketChange::Keep => now,
        BucketChange::Remove => None,
        BucketChange::Set(b) => Some(b),
    };
    Limits {
        bandwidth: one(limits.bandwidth, bw),
        ops: one(limits.ops, ops),
    }
}

/// `limits` as an API rate limiter body (`None` when nothing is limited).
pub fn to_model(limits: &Limits) -> Option<models::RateLimiter> {
    let bucket = |b: &Option<Bucket>| {
        b.map(|b| models::TokenBucket {
            size: b.size,
            one_time_burst: (b.one_time_burst > 0).then_some(b.one_time_burst),
            refill_time: b.refill_time_ms,
        })
    };
    (!limits.is_empty()).then(|| models::RateLimiter {
        bandwidth: bucket(&limits.bandwidth),
        ops: bucket(&limits.ops),
    })
}

/// A `SIZE`-per-second limit from the command line (`bw=10M`, `iops=1000`).
pub fn parse_rate(key: &str, value: &str) -> Result<Bucket, String> {
    let r = crate::options::parse_size(value).map_err(|e| format!("{key}={value:?}: {e}"))?;
    if r == 0 {
        return Err(format!("{key}={value:?}: a limit must be above 0"));
    }
    Ok(Bucket::per_second(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tb(size: u64, burst: Option<u64>, refill: u64) -> models::TokenBucket {
        models::TokenBucket {
            size,
            one_time_burst: burst,
            refill_time: refill,
        }
    }

    #[test]
    fn models_round_trip_and_zero_means_unlimited() {
        let model = models::RateLimiter {
            bandwidth: Some(tb(1000, Some(500), 100)),
            ops: None,
        };
        let l = from_model(&Some(model.clone()));
        assert_eq!(
            l.bandwidth,
            Some(Bucket {
                size: 1000,
                one_time_burst: 500,
                refill_time_ms: 100
            })
        );
        assert_eq!(to_model(&l), Some(model));
        assert_eq!(to_model(&Limits::default()), None);
        let zero = models::RateLimiter {
            bandwidth: Some(tb(0, None, 100)),
            ops: Some(tb(10, None, 0)),
        };
        assert!(from_model(&Some(zero)).is_empty());
    }

    #[test]
    fn patches_keep_what_they_leave_out() {
        let now = Limits {
            bandwidth: Some(Bucket::per_second(1000)),
            ops: Some(Bucket::per_second(10)),
        };
        let c = changes_from_model(&models::RateLimiter {
            bandwidth: None,
            ops: Some(tb(0, None, 0)),
        });
        assert_eq!(c, (BucketChange::Keep, BucketChange::Remove));
        assert_eq!(
            apply(now, c),
            Limits {
                bandwidth: Some(Bucket::per_second(1000)),
                ops: None
            }
        );
        let c = changes_from_model(&models::RateLimiter {
            bandwidth: Some(tb(5, None, 1000)),
            ops: None,
        });
        assert_eq!(apply(now, c).bandwidth, Some(Bucket::per_second(5)));
    }

    #[test]
    fn command_line_rates() {
        assert_eq!(
            parse_rate("bw", "10M").unwrap(),
            Bucket::per_second(10 << 20)
        );
        assert!(parse_rate("bw", "0").unwrap_err().contains("above 0"));
        assert!(parse_rate("iops", "x").unwrap_err().contains("iops=\"x\""));
    }
}
