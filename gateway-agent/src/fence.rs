//! Fencing: two agents with one gateway id must never both act.
//!
//! The orchestrator holds one link per gateway id. An agent that was paused
//! (SIGSTOP, a frozen VM) long enough for its link to be dropped may find,
//! when it runs again, that another agent took its id — and until it hears
//! so, it would go on enforcing its last target over the other's work. So an
//! agent acts only while its fence is open:
//!
//! * the process checks its own clock: a gap far longer than its ticker's
//!   period means it did not run, and the fence closes (`Resumed`) until the
//!   orchestrator answers a new registration;
//! * a registration refused because another agent holds the id closes it
//!   (`Superseded`): the agent keeps what runs, touches nothing, says so,
//!   and dials again; admitted again, it opens.
//!
//! A gateway cut off from the orchestrator (a partition, no refusal) keeps
//! acting on its last target: that is what the local broker and the stored
//! target are for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Whether the agent may act.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fence {
    /// It may.
    #[default]
    Open,
    /// It did not run for this long: another agent may hold its id now.
    Resumed(Duration),
    /// The orchestrator says another agent holds its id.
    Superseded(String),
}

impl Fence {
    /// Why the agent must not act, if it must not.
    pub fn holds(&self) -> Option<String> {
        match self {
            Fence::Open => None,
            Fence::Resumed(gap) => Some(format!(
                "the agent did not run for {}s (paused?): acting on nothing until the orchestrator admits it again",
                gap.as_secs()
            )),
            Fence::Superseded(why) => Some(format!(
                "superseded: {why}; keeping what runs, touching nothing until admitted again"
            )),
        }
    }
}

/// A gap in the process's running longer than this closes the fence.
pub const PAUSE: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(250);

/// The fence and the clock that notices pauses.
#[derive(Debug)]
pub struct Fencing {
    fence: watch::Sender<Fence>,
    last_tick: Mutex<Instant>,
}

impl Fencing {
    /// An open fence; its clock runs until `shutdown`.
    pub fn start(shutdown: CancellationToken) -> std::sync::Arc<Fencing> {
        let (fence, _) = watch::channel(Fence::Open);
        let f = std::sync::Arc::new(Fencing {
            fence,
            last_tick: Mutex::new(Instant::now()),
        });
        let clock = std::sync::Arc::clone(&f);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => clock.check(),
                }
            }
        });
        f
    }

    /// Notes a pause if the clock shows one, and moves the clock on.
    fn check(&self) {
        let now = Instant::now();
        let gap = {
            let mut last = self.last_tick.lock().unwrap_or_else(|p| p.into_inner());
            let gap = now.saturating_duration_since(*last);
            *last = now;
            gap
        };
        if gap > PAUSE {
            self.fence.send_if_modified(|f| {
                if *f == Fence::Open {
                    tracing::warn!(paused_s = gap.as_secs(), "the agent did not run for a while: not acting until the orchestrator admits it again");
                    *f = Fence::Resumed(gap);
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Why the agent must not act now, if it must not (a pause its clock
    /// has not ticked past yet counts).
    pub fn holds(&self) -> Option<String> {
        self.check();
        self.fence.borrow().holds()
    }

    /// Follows the fence.
    pub fn subscribe(&self) -> watch::Receiver<Fence> {
        self.fence.subscribe()
    }

    /// The orchestrator admitted the agent.
    pub fn admitted(&self) {
        self.set(Fence::Open);
    }

    /// The orchestrator refused the agent: another holds its id.
    pub fn superseded(&self, why: String) {
        self.set(Fence::Superseded(why));
    }

    /// The orchestrator cannot be reached: a pause alone does not hold the
    /// agent back (cut off, it keeps its subsystem running); a refusal does.
    pub fn unreachable(&self) {
        self.fence.send_if_modified(|f| {
            if matches!(f, Fence::Resumed(_)) {
                *f = Fence::Open;
                true
            } else {
                false
            }
        });
    }

    fn set(&self, to: Fence) {
        self.fence.send_if_modified(|f| {
            if *f == to {
                return false;
            }
            match (&*f, &to) {
                (_, Fence::Open) => tracing::info!("admitted by the orchestrator: acting again"),
                (_, other) => {
                    tracing::warn!("{}", other.holds().unwrap_or_default())
                }
            }
            *f = to;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_closes_the_fence_until_the_orchestrator_answers() {
        let stop = CancellationToken::new();
        let f = Fencing::start(stop.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(f.holds(), None);
        // The process did not run: its clock jumps.
        *f.last_tick.lock().unwrap() -= Duration::from_secs(30);
        assert!(f.holds().unwrap().contains("did not run for 30s"));
        // Cut off: it acts again on its own.
        f.unreachable();
        assert_eq!(f.holds(), None);
        // Refused: it holds back, whatever the network does, until admitted.
        f.superseded("gateway `g` is already connected".into());
        f.unreachable();
        assert!(f.holds().unwrap().starts_with("superseded: gateway `g`"));
        f.admitted();
        assert_eq!(f.holds(), None);
        stop.cancel();
    }
}
