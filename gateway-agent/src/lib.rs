//! The gateway agent: one local subsystem's models@run.time engine.
//!
//! It observes what runs (workloads carrying Continuum labels), rebuilds the
//! current model from them, diffs it with the target, plans with
//! `continuum_models::plan`, and enacts the steps through a driver.

#![warn(missing_docs)]

pub mod admission;
pub mod agent;
pub mod backoff;
pub mod blobs;
pub mod bridge;
pub mod cli;
pub mod deployers;
pub mod devices;
pub mod engine;
pub mod exec;
pub mod fence;
mod firmware;
pub mod fleet;
pub mod function_image;
mod function_stats;
mod host_load;
mod lifecycle;
pub mod link;
mod local;
pub mod metrics;
mod observe;
pub mod orchestrators;
mod proxies;
pub mod routing;
pub mod runtime;
pub mod secrets;
pub mod spec;
pub mod store;
pub mod upgrade;

pub use continuum_models as models;
