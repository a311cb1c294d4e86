//! `continuum get`: a target or current model from the orchestrator.

use std::process::ExitCode;

use continuum_proto::v1::{GetRequest, View};

use crate::remote::{self, explain};
use crate::Format;

pub fn run(
    server: &remote::Server,
    subsystem: Option<String>,
    current: bool,
    revision: Option<u64>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        let r = client
            .get(GetRequest {
                view: if current { View::Current } else { View::Target } as i32,
                subsystem: subsystem.unwrap_or_default(),
                revision: revision.unwrap_or(0),
            })
            .await
            .map_err(explain)?
            .into_inner();
        match format {
            Format::Json => super::print_json(&r)?,
            Format::Human => {
                let model: serde_json::Value =
                    serde_json::from_slice(&r.model.map(|d| d.json).unwrap_or_default()).map_err(
                        |e| anyhow::anyhow!("the orchestrator sent a model that is not JSON: {e}"),
                    )?;
                outln!("{}", serde_json::to_string_pretty(&model)?);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
