//! Bounded fuzzing of the protocol's decoders: any bytes a peer sends on a
//! gateway link or to the model API decode or fail, and a decoded apply
//! request is prepared or refused — never a panic. `CONTINUUM_FUZZ_CASES`
//! sets the number of cases (256 by default).

use continuum_proto::v1::{
    ApplyRequest, Document, GatewayMessage, OrchestratorMessage, RollbackRequest, WatchRequest,
};
use proptest::prelude::*;
use prost::Message;

fn cases() -> u32 {
    std::env::var("CONTINUUM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = GatewayMessage::decode(&bytes[..]);
        let _ = OrchestratorMessage::decode(&bytes[..]);
        let _ = WatchRequest::decode(&bytes[..]);
        let _ = RollbackRequest::decode(&bytes[..]);
        if let Ok(req) = ApplyRequest::decode(&bytes[..]) {
            let _ = continuum_proto::apply::prepare(&req);
        }
    }

    #[test]
    fn any_documents_in_an_apply_are_prepared_or_refused(
        name in "\\PC{0,20}",
        json in prop::collection::vec(any::<u8>(), 0..200),
        text in "\\PC{0,200}",
    ) {
        for body in [json.clone(), text.clone().into_bytes()] {
            let req = ApplyRequest {
                megamodel: Some(Document { name: name.clone(), json: body }),
                ..ApplyRequest::default()
            };
            let _ = continuum_proto::apply::prepare(&req);
        }
    }

    #[test]
    fn any_error_details_are_read_or_ignored(details in prop::collection::vec(any::<u8>(), 0..300)) {
        let status = tonic::Status::with_details(tonic::Code::InvalidArgument, "x", details.into());
        let _ = continuum_proto::rejection::from_status(&status);
    }
}
