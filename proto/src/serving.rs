//! What every Continuum gRPC server offers besides its own services, as other
//! ecosystems expect: the standard health service (`grpc.health.v1`, for load
//! balancers, Kubernetes probes and `grpc_health_probe`) and server reflection
//! (`grpc.reflection.v1`, for grpcurl and other generic clients).

use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

/// The encoded descriptors of `continuum.v1`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/continuum_descriptor.bin"));

/// The health service and its reporter; the caller marks each of its services
/// serving once it is ready.
pub fn health() -> (HealthReporter, HealthServer<impl Health>) {
    tonic_health::server::health_reporter()
}

/// The reflection service, describing `continuum.v1` and the `google.rpc`
/// error details that refusals carry.
pub fn reflection() -> ServerReflectionServer<impl ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor sets compiled into this binary are valid")
}

/// The connections a server accepts, with Nagle's algorithm off. Links carry
/// small messages both ways (targets down, acknowledgements and reports up);
/// with it on, a reply written while the peer still owes an acknowledgement
/// waited for the peer's delayed ACK, about 40 ms each time. Tonic sets this on
/// the connections of listeners it binds itself, not on one it is given.
pub fn incoming(
    listener: impl Into<tonic::transport::server::TcpIncoming>,
) -> tonic::transport::server::TcpIncoming {
    listener.into().with_nodelay(Some(true))
}
