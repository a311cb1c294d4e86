//! How the wire types look as JSON (`-o json`): enums by name, embedded model
//! documents as the JSON they are rather than as bytes.

use serde::Serializer;

use crate::v1::{ComponentState, RolloutAction, RolloutState, StepState, SubsystemPhase, View};

fn name<S: Serializer>(
    s: S,
    value: &i32,
    name: Option<&str>,
    prefix: &str,
) -> Result<S::Ok, S::Error> {
    match name {
        Some(n) => s.serialize_str(&n.trim_start_matches(prefix).to_ascii_lowercase()),
        None => s.serialize_i32(*value),
    }
}

pub fn component_state<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    let n = ComponentState::try_from(*value)
        .ok()
        .map(|v| v.as_str_name());
    name(s, value, n, "COMPONENT_STATE_")
}

pub fn step_state<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    let n = StepState::try_from(*value).ok().map(|v| v.as_str_name());
    name(s, value, n, "STEP_STATE_")
}

pub fn subsystem_phase<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    let n = SubsystemPhase::try_from(*value)
        .ok()
        .map(|v| v.as_str_name());
    name(s, value, n, "SUBSYSTEM_PHASE_")
}

pub fn view<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    let n = View::try_from(*value).ok().map(|v| v.as_str_name());
    name(s, value, n, "VIEW_")
}

pub fn rollout_state<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    let n = RolloutState::try_from(*value).ok().map(|v| v.as_str_name());
    name(s, value, n, "ROLLOUT_STATE_")
}

pub fn rollout_action<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    let n = RolloutAction::try_from(*value)
        .ok()
        .map(|v| v.as_str_name());
    name(s, value, n, "ROLLOUT_ACTION_")
}

/// JSON bytes embedded as JSON; anything else as a string, lossily.
pub fn embedded<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => s.serialize_some(&v),
        Err(_) => s.serialize_str(&String::from_utf8_lossy(bytes)),
    }
}
