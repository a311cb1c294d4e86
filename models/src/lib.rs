//! Continuum's metamodel: the types of megamodels, deployment models and
//! templates; reading them from JSON with every problem reported at once;
//! validation; partitioning into subsystem models; template expansion; and the
//! structural diff and step plan the engines act on.
//!
//! This crate is pure: no I/O, no async, no clocks.

pub mod component;
pub mod diagnostic;
pub mod locate;
pub mod link;
pub mod model;
pub mod parse;
pub mod resources;
pub mod schema;
pub mod wire;

pub use component::{Component, ComponentSpec, Kind};
pub use diagnostic::{Diagnostic, Invalid, JsonPath, Problem};
pub use link::{Communication, Link};
pub use model::{DeploymentModel, FailurePolicy, Megamodel, Template};
