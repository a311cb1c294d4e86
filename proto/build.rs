//! Compiles the protocol with protox (pure Rust), so no `protoc` is needed.
//! Every message also derives `serde::Serialize`, for the CLI's `-o json`:
//! enums as their names, embedded model documents as JSON.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/continuum/v1/continuum.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    // For server reflection: clients such as grpcurl discover the services.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("continuum_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    let with = |f: &str| format!("#[serde(serialize_with = \"crate::json::{f}\")]");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::SmallCodec")
        .type_attribute(".continuum.v1", "#[derive(serde::Serialize)]")
        .type_attribute(".continuum.v1", "#[serde(rename_all = \"snake_case\")]")
        .field_attribute(
            ".continuum.v1.ComponentStatus.state",
            with("component_state"),
        )
        .field_attribute(".continuum.v1.StepProgress.state", with("step_state"))
        .field_attribute(
            ".continuum.v1.SubsystemStatus.phase",
            with("subsystem_phase"),
        )
        .field_attribute(".continuum.v1.GetRequest.view", with("view"))
        .field_attribute(".continuum.v1.Rollout.state", with("rollout_state"))
        .field_attribute(
            ".continuum.v1.ControlRolloutRequest.action",
            with("rollout_action"),
        )
        .field_attribute(".continuum.v1.Document.json", with("embedded"))
        .field_attribute(".continuum.v1.SubsystemDiff.diff", with("embedded"))
        .compile_fds(descriptors)?;
    Ok(())
}
