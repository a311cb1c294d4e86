//! The gateway agent: one local subsystem's models@run.time engine (DESIGN §1, §3).
//!
//! It diffs its target subsystem model with the model of what really runs, plans
//! with `continuum_models::plan`, enacts the steps through its drivers, and streams
//! what changed back to the orchestrator. The link, reconcile loop and drivers
//! arrive with issue #5.

pub use continuum_models as models;
