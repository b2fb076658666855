//! Health checks, as Docker runs them: a pure state machine ([`Checker`]) fed with probe
//! results and the time, and the probe's command line from a Compose `healthcheck:`
//! ([`probe_command`]). The worker's health loop (`crate::worker::health`) runs the
//! probes (an exec into the container) and feeds the results; nothing here touches the
//! kernel.
//!
//! Docker's rules: the status is `starting` until the first success (healthy) or until
//! `retries` consecutive failures (unhealthy); failures during `start_period` do not
//! count, and probes run every `start_interval` then; afterwards every `interval`.
//! Healthy becomes unhealthy after `retries` consecutive failures; one success makes
//! it healthy again. A probe that runs longer than `timeout` is a failure.

use std::time::Duration;

use spec::model::Healthcheck;
use spec::task::Health;

/// Docker's defaults.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);

/// The command a healthcheck runs in the container, or `None` when it is disabled
/// (`NONE`, `disable: true`, or no test).
pub fn probe_command(check: &Healthcheck) -> Option<Vec<String>> {
    if check.disable {
        return None;
    }
    match check.test.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")])
        }
        _ => None,
    }
}

/// One container's health, advanced by probe results.
#[derive(Debug, Clone)]
pub struct Checker {
    interval: Duration,
    timeout: Duration,
    retries: u32,
    start_period: Duration,
    start_interval: Duration,
    /// When the container started (ms).
    started: u64,
    status: Health,
    failures: u32,
    /// When the next probe is due (ms).
    next: u64,
}

impl Checker {
    /// A checker for a container that started at `started` (unix ms).
    pub fn new(check: &Healthcheck, started: u64) -> Checker {
        let nonzero = |d: Option<Duration>, default| d.filter(|d| !d.is_zero()).unwrap_or(default);
        let start_period = check.start_period.unwrap_or_default();
        let start_interval = nonzero(check.start_interval, DEFAULT_START_INTERVAL);
        let interval = nonzero(check.interval, DEFAULT_INTERVAL);
        let first = if start_period.is_zero() {
            interval
        } else {
            start_interval.min(interval)
        };
        Checker {
            interval,
            timeout: nonzero(check.timeout, DEFAULT_TIMEOUT),
            retries: check.retries.filter(|r| *r > 0).unwrap_or(DEFAULT_RETRIES),
            start_period,
            start_interval,
            started,
            status: Health::Starting,
            failures: 0,
            next: started + ms(first),
        }
    }

    /// A checker for a container that was already checked, as `known` (a restarted
    /// daemon's): it goes on from there instead of from `starting`, so that a healthy
    /// container stays in its service's DNS answers and port backends across the
    /// restart. Its next probe is due at once.
    pub fn resume(check: &Healthcheck, started: u64, known: Health) -> Checker {
        let mut c = Checker::new(check, started);
        match known {
            Health::Healthy => c.status = Health::Healthy,
            Health::Unhealthy => {
                c.status = Health::Unhealthy;
                c.failures = c.retries;
            }
            Health::Starting | Health::None => {}
        }
        c
    }

    pub fn status(&self) -> Health {
        self.status
    }

    /// When the next probe is due (unix ms).
    pub fn next_probe(&self) -> u64 {
        self.next
    }

    /// How long a probe may run.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn in_start_period(&self, now: u64) -> bool {
        now < self.started + ms(self.start_period)
    }

    /// Records a probe that finished at `now`: `healthy` if it exited 0 within the
    /// timeout. Returns the new status.
    pub fn record(&mut self, healthy: bool, now: u64) -> Health {
        let starting = self.in_start_period(now);
        if healthy {
            self.failures = 0;
            self.status = Health::Healthy;
        } else if !(starting && self.status == Health::Starting) {
            self.failures += 1;
            if self.failures >= self.retries {
                self.status = Health::Unhealthy;
            }
        }
        let every = if starting && self.status == Health::Starting {
            self.start_interval
        } else {
            self.interval
        };
        self.next = now + ms(every);
        self.status
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(interval: u64, retries: u32, start_period: u64, start_interval: u64) -> Healthcheck {
        Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            interval: Some(Duration::from_millis(interval)),
            timeout: Some(Duration::from_millis(50)),
            retries: Some(retries),
            start_period: Some(Duration::from_millis(start_period)),
            start_interval: Some(Duration::from_millis(start_interval)),
            disable: false,
        }
    }

    #[test]
    fn commands() {
        let mut c = Healthcheck {
            test: vec!["CMD-SHELL".into(), "wget -q -O- localhost || exit 1".into()],
            ..Healthcheck::default()
        };
        assert_eq!(
            probe_command(&c).unwrap(),
            ["/bin/sh", "-c", "wget -q -O- localhost || exit 1"]
        );
        c.test = vec!["CMD".into(), "pg_isready".into(), "-U".into(), "x".into()];
        assert_eq!(probe_command(&c).unwrap(), ["pg_isready", "-U", "x"]);
        c.test = vec!["NONE".into()];
        assert_eq!(probe_command(&c), None);
        c.test = vec!["CMD".into(), "true".into()];
        c.disable = true;
        assert_eq!(probe_command(&c), None);
    }

    #[test]
    fn starting_then_healthy_then_unhealthy_after_retries_then_healthy() {
        let mut c = Checker::new(&check(100, 3, 0, 10), 1000);
        assert_eq!(c.status(), Health::Starting);
        assert_eq!(c.next_probe(), 1100);
        assert_eq!(c.record(true, 1100), Health::Healthy);
        assert_eq!(c.next_probe(), 1200);
        assert_eq!(c.record(false, 1200), Health::Healthy);
        assert_eq!(c.record(false, 1300), Health::Healthy);
        assert_eq!(c.record(false, 1400), Health::Unhealthy);
        assert_eq!(c.record(true, 1500), Health::Healthy);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_and_probe_at_start_interval() {
        let mut c = Checker::new(&check(1000, 1, 500, 50), 0);
        assert_eq!(c.next_probe(), 50);
        for t in [50, 100, 150, 400] {
            assert_eq!(c.record(false, t), Health::Starting, "at {t}");
            assert_eq!(c.next_probe(), t + 50);
        }
        // After the start period a failure counts (retries: 1).
        assert_eq!(c.record(false, 600), Health::Unhealthy);
        assert_eq!(c.next_probe(), 1600);
    }

    #[test]
    fn never_healthy_becomes_unhealthy_after_retries() {
        let mut c = Checker::new(&check(10, 2, 0, 0), 0);
        assert_eq!(c.record(false, 10), Health::Starting);
        assert_eq!(c.record(false, 20), Health::Unhealthy);
    }
}
