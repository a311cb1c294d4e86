//! The orchestrator: Continuum's global models@run.time engine (DESIGN §1).
//!
//! It stores target megamodel revisions, validates, expands and partitions them
//! with `continuum-models`, pushes each subsystem's model to its gateway over
//! `GatewayLink`, and keeps the global current model from the gateways' reports.
//! The service, store and bus arrive with issue #4.

pub use continuum_models as models;
