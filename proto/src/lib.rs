//! Continuum's gRPC protocol (package `continuum.v1`): `ModelService` for clients
//! and `GatewayLink` for gateway agents.
//!
//! The `.proto` files and their code generation (protox + tonic, no `protoc`
//! needed) arrive with the orchestrator (issue #4). Model documents travel as the
//! canonical JSON of `continuum-models` inside typed envelopes, so that crate stays
//! the one schema; this constant names the package those envelopes belong to.

/// The protobuf package of Continuum's services.
pub const PACKAGE: &str = "continuum.v1";
