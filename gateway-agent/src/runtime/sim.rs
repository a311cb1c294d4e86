//! A simulated engine, for fleets of simulated gateways (`continuum gateway
//! sim`): no containers. What runs is kept in memory by the in-memory engine;
//! every operation that changes something takes a random time within a range
//! and fails at a given rate, so that the orchestrator and the agents meet the
//! delays and failures of a real fleet without its machines.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use super::fake::FakeRuntime;
use super::{ContainerRuntime, ImageSource, RunState, RuntimeError, Workload, WorkloadSpec};

/// How long a simulated operation takes: a duration, or a range drawn from
/// uniformly (`10ms..200ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTime {
    /// The shortest.
    pub min: Duration,
    /// The longest.
    pub max: Duration,
}

impl StepTime {
    /// Always `d`.
    pub fn fixed(d: Duration) -> StepTime {
        StepTime { min: d, max: d }
    }
}

impl FromStr for StepTime {
    type Err = String;

    fn from_str(s: &str) -> Result<StepTime, String> {
        let one = |part: &str| {
            let part = part.trim();
            if part == "0" {
                return Ok(Duration::ZERO);
            }
            humantime::parse_duration(part)
                .map_err(|e| format!("`{part}` is not a duration such as 50ms ({e})"))
        };
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let d = one(s)?;
                (d, d)
            }
        };
        if min > max {
            return Err(format!(
                "`{s}`: the shortest time is longer than the longest"
            ));
        }
        Ok(StepTime { min, max })
    }
}

impl fmt::Display for StepTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (
            humantime::format_duration(self.min),
            humantime::format_duration(self.max),
        );
        if self.min == self.max {
            write!(f, "{a}")
        } else {
            write!(f, "{a}..{b}")
        }
    }
}

/// A failure rate: the share of operations that fail, in `[0, 1]`.
pub fn failure_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate between 0 and 1 (such as 0.01)"
        )),
    }
}

/// A workload whose environment sets this never starts on a simulated
/// gateway (its value is the reason given): a version that is broken
/// everywhere, for rehearsing a rollout that must stop.
pub const FAIL_ENV: &str = "CONTINUUM_SIM_FAIL";

/// How a simulated engine behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimBehaviour {
    /// How long each operation that changes something takes.
    pub step: StepTime,
    /// The share of those operations that fail.
    pub failure_rate: f64,
}

/// The simulated engine.
#[derive(Debug)]
pub struct SimRuntime {
    engine: FakeRuntime,
    behaviour: SimBehaviour,
    rng: Mutex<fastrand::Rng>,
}

impl SimRuntime {
    /// An empty engine behaving as `behaviour`, its draws seeded by `seed`
    /// (one seed, one sequence of delays and failures).
    pub fn new(behaviour: SimBehaviour, seed: u64) -> SimRuntime {
        SimRuntime {
            engine: FakeRuntime::unrecorded(),
            behaviour,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// What runs, as the engine holds it.
    pub fn workloads(&self) -> Vec<Workload> {
        self.engine.workloads()
    }

    /// Waits as long as an operation takes, then says whether it failed.
    async fn operate(&self, what: &str, target: &str) -> Result<(), RuntimeError> {
        let (wait, fails) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            let StepTime { min, max } = self.behaviour.step;
            let span = u64::try_from((max - min).as_micros()).unwrap_or(u64::MAX);
            let wait = min + Duration::from_micros(rng.u64(0..=span));
            (wait, rng.f64() < self.behaviour.failure_rate)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if fails {
            return Err(RuntimeError::Failed(format!(
                "simulated failure: {what} {target}"
            )));
        }
        Ok(())
    }
}

impl ContainerRuntime for SimRuntime {
    async fn list(&self, label: &str, value: &str) -> Result<Vec<Workload>, RuntimeError> {
        self.engine.list(label, value).await
    }

    async fn ensure_image(&self, source: &ImageSource) -> Result<(), RuntimeError> {
        self.operate("image", source.reference()).await?;
        // A simulated gateway has every image it is named.
        if let ImageSource::Named(name) = source {
            self.engine.add_image(name);
        }
        self.engine.ensure_image(source).await
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<String, RuntimeError> {
        self.operate("create", &spec.name).await?;
        if let Some(why) = spec.env.get(FAIL_ENV) {
            return Err(RuntimeError::Failed(format!(
                "simulated failure of {}: {why}",
                spec.name
            )));
        }
        self.engine.create(spec).await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.operate("start", id).await?;
        self.engine.start(id).await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.operate("stop", id).await?;
        self.engine.stop(id).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.operate("remove", id).await?;
        self.engine.remove(id).await
    }

    async fn state(&self, id: &str) -> Result<RunState, RuntimeError> {
        self.engine.state(id).await
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.engine.ensure_network(name, labels).await
    }

    async fn prune_networks(
        &self,
        label: &str,
        value: &str,
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        self.engine.prune_networks(label, value, keep).await
    }

    async fn watch(
        &self,
        label: &str,
        value: &str,
        changes: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), RuntimeError> {
        self.engine.watch(label, value, changes).await
    }

    async fn restarts(&self, id: &str) -> Result<(u64, Option<i64>), RuntimeError> {
        self.engine.restarts(id).await
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        self.engine.logs(id, lines).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> WorkloadSpec {
        WorkloadSpec {
            name: name.to_owned(),
            image: "svc:1".to_owned(),
            command: Vec::new(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            devices: Vec::new(),
            mounts: Vec::new(),
            restart: Default::default(),
            network: None,
            aliases: Vec::new(),
            labels: BTreeMap::from([("l".to_owned(), "v".to_owned())]),
        }
    }

    #[test]
    fn step_times_read_as_one_duration_or_a_range() {
        let ms = Duration::from_millis;
        assert_eq!("50ms".parse(), Ok(StepTime::fixed(ms(50))));
        assert_eq!("0".parse(), Ok(StepTime::fixed(Duration::ZERO)));
        assert_eq!(
            "10ms..1s".parse(),
            Ok(StepTime {
                min: ms(10),
                max: ms(1000)
            })
        );
        assert!("1s..10ms"
            .parse::<StepTime>()
            .unwrap_err()
            .contains("longer"));
        assert!("soon".parse::<StepTime>().is_err());
        assert_eq!(
            "10ms..1s".parse::<StepTime>().unwrap().to_string(),
            "10ms..1s"
        );
        assert_eq!(failure_rate("0.25"), Ok(0.25));
        assert!(failure_rate("2").is_err());
        assert!(failure_rate("x").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn operations_take_their_time_and_what_runs_is_kept() {
        let step = StepTime {
            min: Duration::from_millis(100),
            max: Duration::from_millis(200),
        };
        let sim = SimRuntime::new(
            SimBehaviour {
                step,
                failure_rate: 0.0,
            },
            7,
        );
        let t0 = tokio::time::Instant::now();
        sim.ensure_image(&ImageSource::Named("svc:1".into()))
            .await
            .unwrap();
        let id = sim.create(&spec("a")).await.unwrap();
        sim.start(&id).await.unwrap();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took <= Duration::from_millis(600),
            "three operations of 100..200ms took {took:?}"
        );
        assert_eq!(sim.state(&id).await.unwrap(), RunState::Running);
        let listed = sim.list("l", "v").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "a");
        // Observing takes no time.
        let t1 = tokio::time::Instant::now();
        sim.state(&id).await.unwrap();
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_come_at_their_rate_and_change_nothing() {
        let sim = SimRuntime::new(
            SimBehaviour {
                step: StepTime::fixed(Duration::ZERO),
                failure_rate: 0.3,
            },
            11,
        );
        sim.engine.add_image("svc:1");
        let mut failed = 0;
        for i in 0..1_000 {
            match sim.create(&spec(&format!("w{i}"))).await {
                Ok(_) => {}
                Err(RuntimeError::Failed(why)) => {
                    assert_eq!(why, format!("simulated failure: create w{i}"));
                    failed += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            (250..=350).contains(&failed),
            "{failed} of 1,000 failed at 0.3"
        );
        // A failed create left nothing behind.
        assert_eq!(sim.workloads().len(), 1_000 - failed);
    }
}
