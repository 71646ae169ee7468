//! Trying again, in one place: every retry loop of the daemon (the Data API backend, the Connect
//! reconnect, the Connect REST calls, the log shipper) takes its waits from a [`Policy`] it
//! configures from its own settings, and the outgoing HTTP clients read `Retry-After` here.
//!
//! The schedule is `backon`'s exponential one (`base`, `base·factor`, … capped at `cap`, at most
//! `max_retries` waits); on top of it:
//! * **full jitter** ([`Jitter::Full`]): each wait is uniform in `[0, step]`. `backon`'s own jitter
//!   adds up to one step (`[step, 2·step)`), which would double the waits and pass the cap, so it is
//!   not used;
//! * **`Retry-After`** ([`Backoff::next_wait`]): a wait the server asks for takes the place of the
//!   policy's next one (the schedule still advances), and a wait that would reach the caller's
//!   deadline is not taken: the caller gives up instead.

use std::time::{Duration, SystemTime};

use backon::BackoffBuilder;
use rand::Rng;

/// The wait a `Retry-After` header asks for (delay-seconds or an HTTP date); `None` when absent
/// or unreadable.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// How each wait is drawn from its step of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The step itself.
    None,
    /// Uniform in `[0, step]` ("full jitter").
    Full,
}

/// A retry policy: the waits between attempts. Built per use from that use's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The first step.
    pub base: Duration,
    /// No step is longer.
    pub cap: Duration,
    /// Each step is the previous one times this (2: doubling; 1: constant).
    pub factor: f32,
    /// Waits (retries) at most after the first attempt; `None`: no limit.
    pub max_retries: Option<usize>,
    pub jitter: Jitter,
}

impl Policy {
    /// `base`, `2·base`, `4·base`, … capped at `cap`; no limit on retries, no jitter.
    pub const fn exponential(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            factor: 2.0,
            max_retries: None,
            jitter: Jitter::None,
        }
    }

    /// `delay` every time; no limit on retries, no jitter.
    pub const fn constant(delay: Duration) -> Self {
        Self {
            base: delay,
            cap: delay,
            factor: 1.0,
            max_retries: None,
            jitter: Jitter::None,
        }
    }

    /// At most `retries` waits (so `retries + 1` attempts).
    pub const fn with_max_retries(mut self, retries: usize) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// Each wait uniform in `[0, step]`.
    pub const fn with_full_jitter(mut self) -> Self {
        self.jitter = Jitter::Full;
        self
    }

    /// The waits of one run of attempts, in order (start a new one after a success).
    pub fn backoff(&self) -> Backoff {
        let schedule = backon::ExponentialBuilder::new()
            .with_min_delay(self.base)
            .with_max_delay(self.cap)
            .with_factor(self.factor);
        let schedule = match self.max_retries {
            Some(n) => schedule.with_max_times(n),
            None => schedule.without_max_times(),
        };
        Backoff {
            schedule: schedule.build(),
            cap: self.cap,
            jitter: self.jitter,
        }
    }
}

/// Why a run of attempts ends without another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The policy's retries are spent.
    Exhausted,
    /// The wait (the policy's or `Retry-After`'s) would reach the deadline.
    Deadline { wait: Duration },
}

/// The waits of one run of attempts ([`Policy::backoff`]): an iterator of waits, `None` once the
/// retries are spent.
#[derive(Debug)]
pub struct Backoff {
    schedule: backon::ExponentialBackoff,
    cap: Duration,
    jitter: Jitter,
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // backon grows the step in f32: rounded to the microsecond, `200 ms · 2` is 400 ms again,
        // not 400.000006 ms. A `base` above `cap` is capped from the first step on.
        let step = self.schedule.next()?;
        let micros = (step.as_nanos().saturating_add(500) / 1000).min(u64::MAX as u128) as u64;
        let step = Duration::from_micros(micros).min(self.cap);
        Some(match self.jitter {
            Jitter::None => step,
            Jitter::Full => step.mul_f64(rand::thread_rng().gen_range(0.0..=1.0)),
        })
    }
}

impl Backoff {
    /// The wait before the next attempt: `retry_after` (what the server asked for) when given,
    /// else the policy's next wait; the schedule advances either way. `Err` when the retries are
    /// spent, or when the wait is not shorter than `remaining` (the time left before the caller's
    /// deadline, if it has one): sleeping it would leave no time for the attempt.
    pub fn next_wait(
        &mut self,
        retry_after: Option<Duration>,
        remaining: Option<Duration>,
    ) -> Result<Duration, GiveUp> {
        let step = self.next().ok_or(GiveUp::Exhausted)?;
        let wait = retry_after.unwrap_or(step);
        match remaining {
            Some(left) if wait >= left => Err(GiveUp::Deadline { wait }),
            _ => Ok(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_doubles_up_to_the_cap_then_stops() {
        let waits: Vec<_> = Policy::exponential(250 * MS, 5000 * MS)
            .with_max_retries(6)
            .backoff()
            .collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 5000].map(|m| m * MS).to_vec()
        );
        // f32 growth does not leak into the steps.
        let waits: Vec<_> = Policy::exponential(200 * MS, 10_000 * MS)
            .with_max_retries(7)
            .backoff()
            .collect();
        assert_eq!(
            waits,
            [200, 400, 800, 1600, 3200, 6400, 10_000]
                .map(|m| m * MS)
                .to_vec()
        );
    }

    #[test]
    fn constant_and_unlimited() {
        let mut b = Policy::constant(1000 * MS).backoff();
        for _ in 0..1000 {
            assert_eq!(b.next(), Some(1000 * MS));
        }
        assert_eq!(
            Policy::constant(MS).with_max_retries(0).backoff().next(),
            None
        );
    }

    #[test]
    fn base_above_cap_is_capped() {
        let mut b = Policy::exponential(900 * MS, 500 * MS).backoff();
        assert_eq!(b.next(), Some(500 * MS));
        assert_eq!(b.next(), Some(500 * MS));
    }

    #[test]
    fn full_jitter_stays_within_each_step() {
        let p = Policy::exponential(100 * MS, 500 * MS).with_full_jitter();
        let mut b = p.backoff();
        assert!(b.next().unwrap() <= 100 * MS);
        assert!(b.next().unwrap() <= 200 * MS);
        assert!(b.next().unwrap() <= 400 * MS);
        for w in b.take(10_000) {
            assert!(w <= 500 * MS, "{w:?}");
        }
        // Full jitter spreads over the whole step, not only its top.
        let low = p.backoff().skip(3).take(1000).filter(|w| *w < 250 * MS);
        assert!(low.count() > 100);
    }

    #[test]
    fn retry_after_takes_the_place_of_the_wait_and_the_deadline_ends_the_run() {
        let mut b = Policy::exponential(100 * MS, 500 * MS)
            .with_max_retries(3)
            .backoff();
        assert_eq!(b.next_wait(None, None), Ok(100 * MS));
        assert_eq!(b.next_wait(Some(3000 * MS), None), Ok(3000 * MS));
        // The schedule advanced under the Retry-After.
        assert_eq!(b.next_wait(None, Some(401 * MS)), Ok(400 * MS));
        assert_eq!(b.next_wait(None, None), Err(GiveUp::Exhausted));

        let mut b = Policy::constant(1000 * MS).backoff();
        assert_eq!(
            b.next_wait(None, Some(1000 * MS)),
            Err(GiveUp::Deadline { wait: 1000 * MS })
        );
        assert_eq!(
            b.next_wait(Some(60_000 * MS), Some(30_000 * MS)),
            Err(GiveUp::Deadline { wait: 60_000 * MS })
        );
        assert_eq!(b.next_wait(Some(MS), Some(30_000 * MS)), Ok(MS));
    }
}
