//! An in-memory driver: for unit tests of the engine's logic, and the engine of
//! simulated gateways (`super::sim`). It models what the engine relies on:
//! images must exist or be buildable, names are unique, a host port can be
//! bound by one running workload, and some images exit at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::{ContainerRuntime, ImageSource, RunState, RuntimeError, Workload, WorkloadSpec};

#[derive(Debug, Default)]
struct State {
    workloads: BTreeMap<String, (WorkloadSpec, RunState)>,
    images: BTreeSet<String>,
    next: u64,
    /// Images whose build fails, with the reason.
    broken: BTreeMap<String, String>,
    /// Images whose workloads exit at once with code 1.
    crashing: BTreeSet<String>,
    unreachable: bool,
    /// Networks and their labels.
    networks: BTreeMap<String, BTreeMap<String, String>>,
    /// Every call, as `op name`, for tests to count.
    calls: Vec<String>,
    /// Whether calls are kept (a simulated gateway runs for long: they are not).
    forget_calls: bool,
}

/// The fake driver.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    /// An engine with no images and no workloads.
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// An engine that keeps no record of the calls made to it.
    pub fn unrecorded() -> FakeRuntime {
        let fake = FakeRuntime::default();
        fake.with(|s| s.forget_calls = true);
        fake
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut s);
        if s.forget_calls {
            s.calls.clear();
        }
        out
    }

    /// Makes an image present.
    pub fn add_image(&self, name: &str) {
        self.with(|s| s.images.insert(name.to_owned()));
    }

    /// Makes builds tagged `tag` fail with `reason`.
    pub fn break_build(&self, tag: &str, reason: &str) {
        self.with(|s| s.broken.insert(tag.to_owned(), reason.to_owned()));
    }

    /// Makes workloads of `image` exit as soon as they start.
    pub fn crash_on_start(&self, image: &str) {
        self.with(|s| s.crashing.insert(image.to_owned()));
    }

    /// Makes every call fail as an unreachable engine does (or not).
    pub fn set_unreachable(&self, down: bool) {
        self.with(|s| s.unreachable = down);
    }

    /// Stops a workload behind the engine's back (drift).
    pub fn kill(&self, id: &str) {
        self.with(|s| {
            if let Some(w) = s.workloads.get_mut(id) {
                w.1 = RunState::Exited(Some(137));
            }
        });
    }

    /// Removes a workload behind the engine's back (drift).
    pub fn delete(&self, id: &str) {
        self.with(|s| s.workloads.remove(id));
    }

    /// Every workload, as the engine holds them.
    pub fn workloads(&self) -> Vec<Workload> {
        self.with(|s| {
            s.workloads
                .iter()
                .map(|(id, (spec, state))| Workload {
                    id: id.clone(),
                    name: spec.name.clone(),
                    labels: spec.labels.clone(),
                    state: state.clone(),
                })
                .collect()
        })
    }

    /// The networks that exist.
    pub fn networks(&self) -> Vec<String> {
        self.with(|s| s.networks.keys().cloned().collect())
    }

    /// Every call made, in order, as `operation target`.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    fn check(s: &State) -> Result<(), RuntimeError> {
        if s.unreachable {
            Err(RuntimeError::Unreachable("the fake engine is down".into()))
        } else {
            Ok(())
        }
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn list(&self, label: &str, value: &str) -> Result<Vec<Workload>, RuntimeError> {
        self.with(|s| Self::check(s))?;
        Ok(self
            .workloads()
            .into_iter()
            .filter(|w| w.labels.get(label).is_some_and(|v| v == value))
            .collect())
    }

    async fn ensure_image(&self, source: &ImageSource) -> Result<(), RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            let name = source.reference().to_owned();
            match source {
                ImageSource::Named(_) if s.images.contains(&name) => Ok(()),
                ImageSource::Named(_) => Err(RuntimeError::NoImage(name)),
                ImageSource::Build { .. } => {
                    if let Some(reason) = s.broken.get(&name) {
                        return Err(RuntimeError::Build {
                            image: name,
                            reason: reason.clone(),
                        });
                    }
                    if s.images.insert(name.clone()) {
                        s.calls.push(format!("build {name}"));
                    }
                    Ok(())
                }
            }
        })
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<String, RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            if !s.images.contains(&spec.image) {
                return Err(RuntimeError::NoImage(spec.image.clone()));
            }
            if let Some(n) = spec
                .network
                .as_deref()
                .filter(|n| super::is_custom_network(n))
            {
                if !s.networks.contains_key(n) {
                    return Err(RuntimeError::Failed(format!("network {n} not found")));
                }
            }
            if s.workloads.values().any(|(w, _)| w.name == spec.name) {
                return Err(RuntimeError::Failed(format!(
                    "the name `{}` is already in use",
                    spec.name
                )));
            }
            s.next += 1;
            let id = format!("fake{:04}", s.next);
            s.workloads
                .insert(id.clone(), (spec.clone(), RunState::Created));
            s.calls.push(format!("create {}", spec.name));
            Ok(id)
        })
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            let (spec, _) = s
                .workloads
                .get(id)
                .cloned()
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            for p in spec.ports.iter().filter_map(|p| p.host) {
                let taken = s.workloads.iter().any(|(other, (w, st))| {
                    other != id
                        && *st == RunState::Running
                        && w.ports.iter().any(|q| q.host == Some(p))
                });
                if taken {
                    return Err(RuntimeError::Failed(format!(
                        "port {p} is already allocated"
                    )));
                }
            }
            let state = if s.crashing.contains(&spec.image) {
                RunState::Exited(Some(1))
            } else {
                RunState::Running
            };
            s.workloads.get_mut(id).expect("checked").1 = state;
            s.calls.push(format!("start {}", spec.name));
            Ok(())
        })
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            if let Some(w) = s.workloads.get_mut(id) {
                if w.1 == RunState::Running {
                    w.1 = RunState::Exited(Some(0));
                }
                s.calls.push(format!("stop {}", w.0.name));
            }
            Ok(())
        })
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            if let Some((spec, _)) = s.workloads.remove(id) {
                s.calls.push(format!("remove {}", spec.name));
            }
            Ok(())
        })
    }

    async fn state(&self, id: &str) -> Result<RunState, RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            s.workloads
                .get(id)
                .map(|w| w.1.clone())
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
        })
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            if !s.networks.contains_key(name) {
                s.networks.insert(name.to_owned(), labels.clone());
                s.calls.push(format!("network {name}"));
            }
            Ok(())
        })
    }

    async fn prune_networks(
        &self,
        label: &str,
        value: &str,
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            let used: Vec<String> = s
                .workloads
                .values()
                .filter_map(|(w, _)| w.network.clone())
                .collect();
            s.networks.retain(|name, labels| {
                labels.get(label).is_none_or(|v| v != value)
                    || keep.contains(name)
                    || used.contains(name)
            });
            Ok(())
        })
    }

    async fn watch(
        &self,
        _label: &str,
        _value: &str,
        changes: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), RuntimeError> {
        // The fake has no event stream: tests drive passes themselves.
        changes.closed().await;
        Ok(())
    }

    async fn restarts(&self, _id: &str) -> Result<(u64, Option<i64>), RuntimeError> {
        Ok((0, None))
    }

    async fn logs(&self, id: &str, _lines: usize) -> Result<String, RuntimeError> {
        self.with(|s| {
            Self::check(s)?;
            match s.workloads.get(id) {
                Some((spec, RunState::Exited(Some(1)))) if s.crashing.contains(&spec.image) => {
                    Ok("fatal: cannot start\n".to_owned())
                }
                Some(_) => Ok(String::new()),
                None => Err(RuntimeError::NotFound(id.to_owned())),
            }
        })
    }
}
