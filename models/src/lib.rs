//! Continuum's metamodel: the types of megamodels, deployment models and
//! templates; reading them from JSON with every problem reported at once;
//! validation; partitioning into subsystem models; template expansion; and the
//! structural diff and step plan the engines act on.
//!
//! This crate is pure: no I/O, no async, no clocks.

#![warn(missing_docs)]

pub mod artefact;
mod chunked;
pub mod component;
pub mod cycles;
pub mod diagnostic;
pub mod diff;
mod fields;
#[cfg(any(test, feature = "testing"))]
pub mod generate;
pub mod genesis;
pub(crate) mod index;
pub mod invocation;
pub mod link;
pub mod load;
pub(crate) mod locate;
pub(crate) mod located;
pub mod megadiff;
pub mod model;
pub mod parse;
pub mod placement;
pub mod plan;
pub mod policy;
pub mod resources;
pub mod route;
pub(crate) mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod simulate;
pub mod subsystem;
pub mod template;
pub mod topic;
pub mod validate;
pub(crate) mod wire;

pub use component::{Component, ComponentSpec, Kind};
pub use diagnostic::{Diagnostic, Invalid, JsonPath, Problem};
pub use diff::{diff, ModelDiff};
pub use link::{Communication, Link};
pub use load::{load_megamodel, load_template};
pub use model::{DeploymentModel, FailurePolicy, Megamodel, Template};
pub use plan::{plan, Action, Phase, Plan, Step};
pub use subsystem::partition;
pub use validate::{validate_deployment_model, validate_megamodel, validate_template};
