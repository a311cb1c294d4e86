//! Continuum's gRPC protocol (`continuum.v1`): the client API (`ModelService`)
//! and the gateway link (`GatewayLink`), generated from
//! `proto/continuum/v1/continuum.proto`.

pub mod apply;
pub mod codec;
pub mod json;
pub mod rejection;
pub mod serving;
pub mod tls;

/// The protobuf package of this version of the protocol.
pub const PACKAGE: &str = "continuum.v1";

#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    tonic::include_proto!("continuum.v1");
}
