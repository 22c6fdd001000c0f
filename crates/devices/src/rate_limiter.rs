//! Rate limiters for devices: two token buckets (bytes and operations) with Firecracker's
//! semantics (`size` tokens, refilled from empty in `refill_time` ms, plus a one-time
//! burst), from `dbs-utils` (the token buckets and the refill timerfd are its code, not
//! ours).
//!
//! Devices account *after* the fact: a received frame's size is known only once it has
//! been read. What the buckets could not pay for at once becomes a debt, paid before the
//! device moves anything more, so that the rate holds to within one frame or request
//! however the traffic is shaped. A limiter is shared (`Arc<Mutex<..>>`) by the device's
//! workers and the VMM, which changes its buckets while the guest runs.

use std::os::fd::{AsRawFd, RawFd};

use dbs_utils::rate_limiter::{BucketUpdate, RateLimiter as Buckets, TokenBucket, TokenType};

/// One token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketConfig {
    /// Tokens the bucket holds (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, before the bucket is used.
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// `per_second` tokens a second, refilled over a second, without a burst.
    pub fn per_second(per_second: u64) -> Self {
        BucketConfig {
            size: per_second,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }
    }

    /// How many of the crate's tokens one of ours is. Its bucket refills by whole tokens
    /// and drops the remainder at every refill (every 10 ms while blocked): a bucket that
    /// gains less than a token per refill would never refill, one that gains 1.5 would run
    /// a third slow. Scaled so that a refill brings at least [`MIN_TOKENS_PER_TICK`], the
    /// rate holds to 1%.
    fn scale(&self) -> u64 {
        if self.size == 0 || self.refill_time_ms == 0 {
            return 1;
        }
        // Tokens per 10 ms tick = size * 10 / refill_time_ms.
        let per_tick = (u128::from(self.size) * 10) / u128::from(self.refill_time_ms);
        if per_tick >= MIN_TOKENS_PER_TICK {
            1
        } else {
            let want = (MIN_TOKENS_PER_TICK * u128::from(self.refill_time_ms))
                .div_ceil(u128::from(self.size) * 10);
            // The scaled size stays far from overflowing: size * scale is about
            // MIN_TOKENS_PER_TICK * refill_time_ms / 10.
            u64::try_from(want)
                .unwrap_or(u64::MAX / self.size.max(1))
                .max(1)
        }
    }

    fn bucket(&self) -> Option<TokenBucket> {
        let k = self.scale();
        (self.size != 0 && self.refill_time_ms != 0).then(|| {
            TokenBucket::new(
                self.size.saturating_mul(k),
                self.one_time_burst.saturating_mul(k),
                self.refill_time_ms,
            )
        })
    }
}

/// Fewest of the crate's tokens a 10 ms refill adds ([`BucketConfig::scale`]).
const MIN_TOKENS_PER_TICK: u128 = 100;

/// The limits of a limiter: bytes and operations (packets, requests); `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LimiterConfig {
    /// Bytes.
    pub bandwidth: Option<BucketConfig>,
    /// Operations.
    pub ops: Option<BucketConfig>,
}

impl LimiterConfig {
    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }
}

/// A change to one bucket of a running limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BucketChange {
    /// Leave it.
    #[default]
    Keep,
    /// Remove the limit.
    Remove,
    /// Use this bucket (full at first).
    Set(BucketConfig),
}

impl From<Option<BucketConfig>> for BucketChange {
    fn from(b: Option<BucketConfig>) -> Self {
        b.map_or(BucketChange::Remove, BucketChange::Set)
    }
}

impl BucketChange {
    fn update(self) -> BucketUpdate {
        match self {
            BucketChange::Keep => BucketUpdate::None,
            BucketChange::Remove => BucketUpdate::Disabled,
            BucketChange::Set(b) => match b.bucket() {
                Some(tb) => BucketUpdate::Update(tb),
                None => BucketUpdate::Disabled,
            },
        }
    }
}

/// A rate limiter with its refill timer.
pub struct RateLimiter {
    buckets: Buckets,
    config: LimiterConfig,
    /// Bytes and operations accounted but not yet paid for.
    debt: (u64, u64),
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .field("debt", &self.debt)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter with `config` (an empty one limits nothing but can be given limits later).
    pub fn new(config: LimiterConfig) -> std::io::Result<Self> {
        let mut buckets = Buckets::new(0, 0, 0, 0, 0, 0)?;
        buckets.update_buckets(
            BucketChange::from(config.bandwidth).update(),
            BucketChange::from(config.ops).update(),
        );
        Ok(RateLimiter {
            buckets,
            config: LimiterConfig {
                bandwidth: config.bandwidth.filter(|b| b.bucket().is_some()),
                ops: config.ops.filter(|b| b.bucket().is_some()),
            },
            debt: (0, 0),
        })
    }

    /// The limits now.
    pub fn config(&self) -> LimiterConfig {
        self.config
    }

    /// Accounts `bytes` and one operation that just happened. False: the budget is spent;
    /// move nothing more until [`RateLimiter::fd`] is readable and
    /// [`RateLimiter::replenished`] says so.
    pub fn consume(&mut self, bytes: u64) -> bool {
        self.debt.0 += bytes;
        self.debt.1 += 1;
        self.pay()
    }

    /// Whether there is a debt (the device must wait for the timer).
    pub fn is_blocked(&self) -> bool {
        self.debt != (0, 0)
    }

    fn pay(&mut self) -> bool {
        if self.config.is_empty() {
            self.debt = (0, 0);
            return true;
        }
        let (bw, ops) = (self.config.bandwidth, self.config.ops);
        Self::pay_one(&mut self.buckets, &mut self.debt.0, bw, || TokenType::Bytes);
        Self::pay_one(&mut self.buckets, &mut self.debt.1, ops, || TokenType::Ops);
        !self.is_blocked()
    }

    /// Pays `debt` in parts no bigger than the bucket: a bucket asked for more than it
    /// holds "over-consumes", and the refill during its timer is then credited twice.
    fn pay_one(
        buckets: &mut Buckets,
        debt: &mut u64,
        b: Option<BucketConfig>,
        kind: impl Fn() -> TokenType,
    ) {
        let Some(b) = b else {
            *debt = 0;
            return;
        };
        let k = b.scale();
        while *debt > 0 {
            let part = (*debt).min(b.size);
            if !buckets.consume(part.saturating_mul(k), kind()) {
                return;
            }
            *debt -= part;
        }
    }

    /// The refill timer: readable when the device should call
    /// [`RateLimiter::replenished`].
    pub fn fd(&self) -> RawFd {
        self.buckets.as_raw_fd()
    }

    /// The timer fired (or may have: it never blocks): pays what can be paid; true when
    /// the device may move again.
    pub fn replenished(&mut self) -> bool {
        // An error is a spurious wake-up: the timer has not expired.
        if self.buckets.is_blocked() && self.buckets.event_handler().is_err() {
            return !self.is_blocked();
        }
        self.pay()
    }

    /// Changes the limits while the guest runs (a bucket set anew starts full); a debt
    /// under a removed limit is forgiven.
    pub fn update(&mut self, bandwidth: BucketChange, ops: BucketChange) {
        self.buckets
            .update_buckets(bandwidth.update(), ops.update());
        match bandwidth {
            BucketChange::Keep => {}
            BucketChange::Remove => self.config.bandwidth = None,
            BucketChange::Set(b) => self.config.bandwidth = b.bucket().map(|_| b),
        }
        match ops {
            BucketChange::Keep => {}
            BucketChange::Remove => self.config.ops = None,
            BucketChange::Set(b) => self.config.ops = b.bucket().map(|_| b),
        }
        if self.config.bandwidth.is_none() {
            self.debt.0 = 0;
        }
        if self.config.ops.is_none() {
            self.debt.1 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
        n == 1
    }

    /// Moves `chunk`-sized units through `l` for `secs` seconds as fast as it allows;
    /// returns bytes moved per second.
    fn drive(l: &mut RateLimiter, chunk: u64, secs: f64) -> f64 {
        // Spend what the bucket holds at first, then measure the refill rate.
        while l.consume(chunk) {}
        let first = Instant::now();
        loop {
            assert!(wait_readable(l.fd(), Duration::from_secs(2)), "timer");
            if l.replenished() {
                break;
            }
            assert!(first.elapsed().as_secs() < 5, "the limiter never refilled");
        }
        let start = Instant::now();
        let mut moved = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            moved += chunk;
            if !l.consume(chunk) {
                loop {
                    assert!(wait_readable(l.fd(), Duration::from_secs(2)), "timer");
                    if l.replenished() {
                        break;
                    }
                    assert!(
                        start.elapsed().as_secs_f64() < secs + 5.0,
                        "the limiter never refilled"
                    );
                }
            }
        }
        moved as f64 / start.elapsed().as_secs_f64()
    }

    #[test]
    fn unlimited_never_blocks() {
        let mut l = RateLimiter::new(LimiterConfig::default()).unwrap();
        for _ in 0..100_000 {
            assert!(l.consume(65536));
        }
        assert!(!l.is_blocked());
    }

    #[test]
    fn bandwidth_holds_within_ten_percent_whatever_the_unit_size() {
        // 4 MB/s; units far below, near and above the bucket size's tenth.
        for chunk in [1500u64, 65536, 600_000] {
            let mut l = RateLimiter::new(LimiterConfig {
                bandwidth: Some(BucketConfig {
                    size: 400_000,
                    one_time_burst: 0,
                    refill_time_ms: 100,
                }),
                ops: None,
            })
            .unwrap();
            let rate = drive(&mut l, chunk, 1.5);
            let want = 4_000_000.0;
            // Never above by more than 10%; below only when the machine is busy.
            assert!(
                rate < want * 1.10 && rate > want * 0.7,
                "chunk {chunk}: {rate:.0} B/s against {want}"
            );
        }
    }

    #[test]
    fn ops_limit_counts_operations() {
        let mut l = RateLimiter::new(LimiterConfig {
            bandwidth: None,
            ops: Some(BucketConfig::per_second(200)),
        })
        .unwrap();
        // 1-byte operations: the rate in "bytes" is the rate in operations.
        let rate = drive(&mut l, 1, 1.5);
        assert!(rate < 220.0 && rate > 140.0, "{rate:.1} ops/s");
    }

    #[test]
    fn slow_and_odd_rates_hold_too() {
        // 10/s gains a tenth of a token per 10 ms refill, 150/s one and a half: without
        // scaling the first never refills and the second runs at 100/s.
        for (per_s, secs) in [(10u64, 1.5), (150, 1.5)] {
            let mut l = RateLimiter::new(LimiterConfig {
                bandwidth: None,
                ops: Some(BucketConfig::per_second(per_s)),
            })
            .unwrap();
            let rate = drive(&mut l, 1, secs);
            let want = per_s as f64;
            assert!(
                rate < want * 1.10 && rate > want * 0.7,
                "{per_s}/s: {rate:.1}/s"
            );
        }
    }

    #[test]
    fn one_time_burst_goes_first() {
        let mut l = RateLimiter::new(LimiterConfig {
            bandwidth: Some(BucketConfig {
                size: 1000,
                one_time_burst: 1_000_000,
                refill_time_ms: 1000,
            }),
            ops: None,
        })
        .unwrap();
        for _ in 0..1000 {
            assert!(l.consume(1000), "within the burst");
        }
        assert!(l.consume(1000), "the bucket itself");
        assert!(!l.consume(1000), "spent");
        assert!(l.is_blocked());
    }

    #[test]
    fn updates_apply_at_once_and_removing_a_limit_forgives_its_debt() {
        let mut l = RateLimiter::new(LimiterConfig {
            bandwidth: Some(BucketConfig::per_second(1000)),
            ops: None,
        })
        .unwrap();
        assert!(l.consume(1000));
        assert!(!l.consume(1000));
        l.update(BucketChange::Remove, BucketChange::Keep);
        assert!(!l.is_blocked());
        assert!(l.replenished(), "nothing is owed");
        // The refill timer armed before still runs out once.
        assert!(wait_readable(l.fd(), Duration::from_secs(2)));
        assert!(l.replenished());
        assert!(l.consume(10_000_000));
        assert_eq!(l.config(), LimiterConfig::default());
        l.update(
            BucketChange::Keep,
            BucketChange::Set(BucketConfig::per_second(5)),
        );
        assert_eq!(l.config().ops, Some(BucketConfig::per_second(5)));
        for _ in 0..5 {
            assert!(l.consume(1));
        }
        assert!(!l.consume(1));
        // A zero-sized bucket is no limit.
        l.update(
            BucketChange::Keep,
            BucketChange::Set(BucketConfig {
                size: 0,
                one_time_burst: 0,
                refill_time_ms: 1000,
            }),
        );
        assert_eq!(l.config().ops, None);
        assert!(!l.is_blocked());
    }

    #[test]
    fn replenished_never_blocks_and_spurious_calls_keep_the_block() {
        let mut l = RateLimiter::new(LimiterConfig {
            bandwidth: Some(BucketConfig::per_second(1000)),
            ops: None,
        })
        .unwrap();
        assert!(l.consume(1000));
        assert!(!l.consume(500));
        let t = Instant::now();
        assert!(!l.replenished(), "the timer has not fired");
        assert!(t.elapsed() < Duration::from_millis(5));
        assert!(wait_readable(l.fd(), Duration::from_secs(2)));
        // 10 ms of refill is 10 bytes: still in debt, and the timer is armed again.
        let mut waited = 0;
        while !l.replenished() {
            assert!(wait_readable(l.fd(), Duration::from_secs(2)));
            waited += 1;
            assert!(waited < 200, "the debt is paid within a second");
        }
        assert!(!l.is_blocked());
    }
}
