//! Continuum's orchestrator: the global models@run.time engine. It stores every
//! revision of the target megamodel, pushes each subsystem's model to its gateway
//! over `GatewayLink`, and keeps the global current model from what the gateways
//! report.

#![warn(missing_docs)]

pub mod access;
pub mod admission;
pub mod blobs;
pub mod core;
pub mod embed;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod etcd_cluster;
mod handle;
mod http;
mod link;
pub mod metrics;
pub mod records;
pub mod server;
mod service;
#[cfg(any(test, feature = "testing"))]
pub mod sim;
pub mod store;
pub mod views;

pub use handle::Orchestrator;
pub use server::{start, Config, Running, ServeError, StartError};
