//! The bridge's routes as the engine sees them: one trait, the real bridge
//! behind it, routes kept in memory (tests, simulated gateways), and
//! `NoBridge` for a gateway that runs none.

use std::collections::BTreeMap;

use continuum_models::route::Route;

use crate::bridge::stats::LinkState;
use crate::bridge::Bridge;
use crate::engine::{State, Status};

/// Why routes cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// A component has routes and this agent runs no bridge.
    #[error("`{owner}` needs the bridge ({route}), but this gateway agent runs none (started with --no-bridge)")]
    NoBridge {
        /// The component.
        owner: String,
        /// One of its routes.
        route: String,
    },
    /// The bridge could not record the routes.
    #[error("the bridge cannot record the routes of `{owner}`: {cause}")]
    Store {
        /// The component.
        owner: String,
        /// Why.
        cause: String,
    },
}

/// The bridge's routes as the engine drives them.
pub trait Routing: std::fmt::Debug + Send + Sync + 'static {
    /// Makes `owner`'s routes exactly `routes`.
    fn set(&self, owner: &str, routes: Vec<Route>) -> Result<(), RoutingError>;
    /// The routes carried, by owner.
    fn routes(&self) -> BTreeMap<String, Vec<Route>>;
    /// Whether routes can be carried at all.
    fn enabled(&self) -> bool {
        true
    }
    /// The bridge's state for `continuum status`, if there is a bridge.
    fn health(&self) -> Option<Status> {
        None
    }
}

impl Routing for Bridge {
    fn set(&self, owner: &str, routes: Vec<Route>) -> Result<(), RoutingError> {
        self.set_routes(owner, routes)
            .map_err(|e| RoutingError::Store {
                owner: owner.to_owned(),
                cause: e.to_string(),
            })
    }

    fn routes(&self) -> BTreeMap<String, Vec<Route>> {
        Bridge::routes(self)
    }

    fn health(&self) -> Option<Status> {
        let s = self.status();
        let refused = [&s.global, &s.local]
            .iter()
            .any(|l| matches!(l, LinkState::Refused(_)));
        let state = if refused {
            State::Failed
        } else if s.global == LinkState::Connected && s.local == LinkState::Connected {
            State::Running
        } else {
            State::Pending
        };
        let summary = s.summary();
        Some(Status {
            state,
            // A bridge that does not work says why; one that does says how.
            reason: if state == State::Running {
                String::new()
            } else {
                summary.clone()
            },
            detail: summary,
            generation: 0,
            rolled_back_to: 0,
        })
    }
}

/// A gateway without a bridge: routing anything is an error that says so.
#[derive(Debug, Default)]
pub struct NoBridge;

impl Routing for NoBridge {
    fn set(&self, owner: &str, routes: Vec<Route>) -> Result<(), RoutingError> {
        match routes.first() {
            None => Ok(()),
            Some(r) => Err(RoutingError::NoBridge {
                owner: owner.to_owned(),
                route: r.to_string(),
            }),
        }
    }

    fn routes(&self) -> BTreeMap<String, Vec<Route>> {
        BTreeMap::new()
    }

    fn enabled(&self) -> bool {
        false
    }
}

/// Routes kept in memory (unit tests, and simulated gateways, which carry no
/// traffic).
#[derive(Debug, Default)]
pub struct MemoryRouting(std::sync::Mutex<BTreeMap<String, Vec<Route>>>);

impl Routing for MemoryRouting {
    fn set(&self, owner: &str, routes: Vec<Route>) -> Result<(), RoutingError> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if routes.is_empty() {
            m.remove(owner);
        } else {
            m.insert(owner.to_owned(), routes);
        }
        Ok(())
    }

    fn routes(&self) -> BTreeMap<String, Vec<Route>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
