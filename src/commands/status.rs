//! `continuum status`, `continuum gateways` and `continuum history`.

use std::process::ExitCode;

use continuum_proto::v1::{
    ComponentState, Gateway, HistoryRequest, ListGatewaysRequest, StatusRequest, SubsystemPhase,
};

use crate::remote::{self, ago, explain, now_ms, table};
use crate::style::{clean, Style};
use crate::Format;

fn connected(g: Option<&Gateway>, now: i64) -> String {
    match g {
        None => "never".to_owned(),
        Some(g) if g.connected => "yes".to_owned(),
        Some(g) => format!("no, seen {}", ago(g.last_seen_unix_ms, now)),
    }
}

fn generation(n: u64) -> String {
    if n == 0 {
        "-".to_owned()
    } else {
        n.to_string()
    }
}

pub fn status(server: &remote::Server, format: Format, style: &Style) -> anyhow::Result<ExitCode> {
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        let s = client
            .status(StatusRequest::default())
            .await
            .map_err(explain)?
            .into_inner();
        if format == Format::Json {
            super::print_json(&s)?;
            return Ok(ExitCode::SUCCESS);
        }
        if s.head == 0 {
            outln!("no revision yet: apply a model with `continuum apply -f FILE`");
        } else {
            outln!("head revision {}", style.bold(&s.head.to_string()));
        }
        if let Some(r) = s.rollout.as_ref() {
            outln!("{}", super::rollout::summary(r, style));
        }
        let now = now_ms();
        let mut rows = vec![[
            "SUBSYSTEM",
            "GATEWAY",
            "CONNECTED",
            "TARGET",
            "ACKED",
            "OBSERVED",
            "LIVE DIFF",
            "STATE",
        ]
        .map(String::from)
        .to_vec()];
        let mut failures = Vec::new();
        let mut bridges = Vec::new();
        for sub in &s.subsystems {
            let g = sub.gateway.as_ref();
            // Failures of the target generation; older ones are history.
            let failing: Vec<_> = sub
                .components
                .iter()
                .filter(|c| c.state == ComponentState::Failed as i32)
                .filter(|c| c.generation == 0 || c.generation >= sub.target_generation)
                .collect();
            let phase = SubsystemPhase::try_from(sub.phase).unwrap_or_default();
            let state = match phase {
                SubsystemPhase::Refused => {
                    if let Some(g) = g {
                        failures.push(format!(
                            "{}: target refused: {}",
                            sub.subsystem,
                            clean(&g.rejected)
                        ));
                    }
                    "refused".to_owned()
                }
                SubsystemPhase::Failed => format!("{} failing", failing.len()),
                SubsystemPhase::Converged => "converged".to_owned(),
                SubsystemPhase::NoGateway => "no gateway in the model".to_owned(),
                SubsystemPhase::Waiting => "waiting for its gateway".to_owned(),
                SubsystemPhase::Offline => "gateway offline".to_owned(),
                SubsystemPhase::Deploying | SubsystemPhase::Unspecified => "converging".to_owned(),
                SubsystemPhase::Pending => {
                    format!(
                        "held for a later wave (generation {})",
                        sub.pending_generation
                    )
                }
            };
            for c in failing {
                failures.push(format!(
                    "{}/{}: {}",
                    sub.subsystem,
                    c.component,
                    clean(&c.reason)
                ));
            }
            // What works says more about itself (a gateway's bridge: links,
            // counts, losses).
            for c in sub
                .components
                .iter()
                .filter(|c| !c.detail.is_empty() && c.state != ComponentState::Failed as i32)
            {
                // An offline gateway's last word is no longer the state of things.
                let stale = if g.is_some_and(|g| g.connected) {
                    ""
                } else {
                    " (last reported before the gateway went offline)"
                };
                bridges.push(format!(
                    "{}/{}: {}{stale}",
                    sub.subsystem,
                    c.component,
                    clean(&c.detail)
                ));
            }
            rows.push(vec![
                sub.subsystem.clone(),
                if sub.gateway_id.is_empty() {
                    "-".into()
                } else {
                    sub.gateway_id.clone()
                },
                connected(g, now),
                generation(sub.target_generation),
                generation(g.map_or(0, |g| g.acked_generation)),
                generation(g.map_or(0, |g| g.observed_generation)),
                remote::counts(sub.live.as_ref()),
                state,
            ]);
        }
        if !s.subsystems.is_empty() {
            table(&rows, &|h| style.dim(h));
        }
        for f in &failures {
            outln!("  {} {f}", style.red("failed"));
        }
        for b in &bridges {
            outln!("  {b}");
        }
        for sub in &s.subsystems {
            if let Some(d) = sub.gateway.as_ref().and_then(|g| g.diverged.as_ref()) {
                outln!(
                    "  {} {}: {} ran a local model from {} (replacing generation {}, {}){}; the target replaced it",
                    style.yellow("diverged"),
                    sub.subsystem,
                    d.gateway_id,
                    remote::date_time(d.since_unix_ms),
                    d.base_generation,
                    remote::counts(d.changes.as_ref()),
                    if d.message.is_empty() { String::new() } else { format!(": {}", clean(&d.message)) }
                );
            }
        }
        if !s.unassigned.is_empty() {
            let ids: Vec<&str> = s.unassigned.iter().map(|g| g.id.as_str()).collect();
            outln!("gateways in no subsystem: {}", ids.join(", "));
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn gateways(
    server: &remote::Server,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        let r = client
            .list_gateways(ListGatewaysRequest {})
            .await
            .map_err(explain)?
            .into_inner();
        if format == Format::Json {
            super::print_json(&r)?;
            return Ok(ExitCode::SUCCESS);
        }
        if r.gateways.is_empty() {
            outln!("no gateway has registered yet");
            return Ok(ExitCode::SUCCESS);
        }
        let now = now_ms();
        let mut rows = vec![[
            "GATEWAY",
            "SUBSYSTEM",
            "CONNECTED",
            "VERSION",
            "ARCH",
            "LOCATION",
            "SENT",
            "ACKED",
            "OBSERVED",
        ]
        .map(String::from)
        .to_vec()];
        for g in &r.gateways {
            let caps = g.capabilities.clone().unwrap_or_default();
            rows.push(vec![
                g.id.clone(),
                if g.subsystem.is_empty() {
                    "-".into()
                } else {
                    g.subsystem.clone()
                },
                connected(Some(g), now),
                clean(&g.version).into_owned(),
                caps.arch,
                clean(&g.location).into_owned(),
                generation(g.sent_generation),
                generation(g.acked_generation),
                generation(g.observed_generation),
            ]);
        }
        table(&rows, &|h| style.dim(h));
        for g in r.gateways.iter().filter(|g| !g.agent_upgrade.is_empty()) {
            outln!("{}: {}", g.id, clean(&g.agent_upgrade));
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn forget_gateway(server: &remote::Server, id: &str) -> anyhow::Result<ExitCode> {
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        client
            .forget_gateway(continuum_proto::v1::ForgetGatewayRequest {
                gateway_id: id.to_owned(),
            })
            .await
            .map_err(explain)?;
        outln!("forgot gateway {id}");
        Ok(ExitCode::SUCCESS)
    })
}

pub fn history(
    server: &remote::Server,
    limit: u32,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        let r = client
            .history(HistoryRequest { limit })
            .await
            .map_err(explain)?
            .into_inner();
        if format == Format::Json {
            super::print_json(&r)?;
            return Ok(ExitCode::SUCCESS);
        }
        if r.revisions.is_empty() {
            outln!("no revision yet");
            return Ok(ExitCode::SUCCESS);
        }
        let mut rows = vec![[
            "REVISION",
            "CREATED (UTC)",
            "BASE",
            "AUTHOR",
            "CHANGES",
            "NOTE",
        ]
        .map(String::from)
        .to_vec()];
        for rev in &r.revisions {
            let mut note = if rev.restores > 0 {
                format!("rollback to {}", rev.restores)
            } else {
                clean(&rev.message).into_owned()
            };
            if let Some(x) = r.rollouts.iter().find(|x| x.revision == rev.number) {
                let staged = format!(
                    "staged in {} wave(s): {}",
                    x.waves.len(),
                    super::rollout::state(x, style)
                );
                note = if note.is_empty() {
                    staged
                } else {
                    format!("{note} ({staged})")
                };
            }
            rows.push(vec![
                rev.number.to_string(),
                remote::date_time(rev.created_unix_ms),
                generation(rev.base),
                clean(&rev.author).into_owned(),
                remote::counts(rev.changes.as_ref()).replace("in sync", "none"),
                note,
            ]);
        }
        table(&rows, &|h| style.dim(h));
        if !r.divergences.is_empty() {
            outln!("local changes made by gateways while cut off:");
            for d in &r.divergences {
                outln!(
                    "  {}  {} on {} replaced generation {} ({}){}",
                    remote::date_time(d.since_unix_ms),
                    d.subsystem,
                    d.gateway_id,
                    d.base_generation,
                    remote::counts(d.changes.as_ref()),
                    if d.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", clean(&d.message))
                    }
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
