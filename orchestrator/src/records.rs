//! What the store keeps, as protobuf messages (a compact encoding that can gain
//! fields without breaking old data directories). Models stay canonical JSON.

use continuum_proto::v1::{ComponentStatus, Revision};

/// One immutable revision of the target megamodel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredRevision {
    /// Its metadata (number, base, author, counts).
    #[prost(message, optional, tag = "1")]
    pub meta: Option<Revision>,
    /// The megamodel as deployed (templates expanded, partitioned), canonical JSON.
    #[prost(bytes = "vec", tag = "2")]
    pub megamodel: Vec<u8>,
}

/// A subsystem's target: what its gateway must run.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredTarget {
    /// The revision in which this subsystem's model last changed.
    #[prost(uint64, tag = "1")]
    pub generation: u64,
    /// The id of the subsystem's gateway component (empty when it has none).
    #[prost(string, tag = "2")]
    pub gateway_id: String,
    /// The subsystem's deployment model, canonical JSON (empty model when the
    /// subsystem was removed: its gateway must tear everything down).
    #[prost(bytes = "vec", tag = "3")]
    pub model: Vec<u8>,
    /// The subsystem is no longer in the head revision.
    #[prost(bool, tag = "4")]
    pub removed: bool,
}

/// What a subsystem's gateway last reported.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredCurrent {
    /// The generation the gateway last reported running.
    #[prost(uint64, tag = "1")]
    pub observed_generation: u64,
    /// The current deployment model as the gateway observed it, canonical JSON
    /// (empty until the first report).
    #[prost(bytes = "vec", tag = "2")]
    pub model: Vec<u8>,
    /// The last status of each component.
    #[prost(message, repeated, tag = "3")]
    pub components: Vec<ComponentStatus>,
}

/// A subsystem a staged rollout changes: the target it gets when its wave
/// starts, and the one it had before (restored if the rollout is rolled back).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredChange {
    /// Its target in the revision rolled out.
    #[prost(message, optional, tag = "1")]
    pub target: Option<StoredTarget>,
    /// Its target before the rollout (absent: the revision adds it).
    #[prost(message, optional, tag = "2")]
    pub previous: Option<StoredTarget>,
}
