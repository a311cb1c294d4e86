//! One backoff for everything that retries: the orchestrator link, the
//! bridge's connections, the engine's event watcher, the process supervisor's
//! restarts and the CLI's `watch`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays that double from `min` up to `max`, each a random half to all of the
/// step (so peers cut off together do not all come back at the same instant),
/// and start over from `min` after a success.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    steps: ExponentialBackoff,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            builder,
            steps: builder.build(),
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .steps
            .next()
            .unwrap_or(self.builder.build().next().unwrap_or_default());
        // Jitter of our own: backon's adds up to the whole step again, which
        // would break the cap.
        step.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// After a success: the next wait is short again.
    pub fn reset(&mut self) {
        self.steps = self.builder.build();
    }

    /// Sleeps the next delay; false when `cancelled` completes first.
    pub async fn pause(&mut self, cancelled: impl std::future::Future<Output = ()>) -> bool {
        let wait = self.next_delay();
        tokio::select! {
            () = cancelled => false,
            () = tokio::time::sleep(wait) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_starts_over_after_a_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(30));
        let mut b = Backoff::new(min, max);
        for attempt in 0..40u32 {
            let step = min.saturating_mul(1u32 << attempt.min(16)).min(max);
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} vs {step:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_early_when_cancelled() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.pause(std::future::ready(())).await);
        let started = tokio::time::Instant::now();
        assert!(b.pause(std::future::pending()).await);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }
}
