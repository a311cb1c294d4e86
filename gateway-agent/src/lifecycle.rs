//! A function's lifecycle in its own words. The plan's steps are the same for
//! every component; for a function, `watch` and `status` say which stage of
//! its lifecycle each one is: its source packaged (the digest it is pinned
//! to), under deployment (its runtime built and created), its triggers
//! subscribed on the global bus and republished on `/<function>/in/<stream>`,
//! started, running.

use std::collections::HashMap;

use continuum_models::artefact::split;
use continuum_models::route::{routes_of, Direction};
use continuum_models::{Action, Component};

/// The first characters of a digest shown.
const SHORT: usize = 12;

/// The digest `c`'s source is pinned to, shortened.
fn source(c: &Component) -> Option<String> {
    let src = c.as_function()?.src.as_deref()?;
    split(src)
        .1
        .map(|d| format!("sha256:{}", &d[..SHORT.min(d.len())]))
}

/// The triggers of function `c` and where they are republished.
fn triggers(c: &Component) -> String {
    let routes: Vec<String> = routes_of(c)
        .into_iter()
        .filter(|r| r.direction == Direction::In)
        .map(|r| format!("{} → {}", r.filter, r.destination_topic(&r.filter)))
        .collect();
    if routes.is_empty() {
        "no triggers".to_owned()
    } else {
        routes.join(", ")
    }
}

/// The step `action` as a sentence: in lifecycle terms for a function of
/// `target`, else the plan's own words.
pub fn step(action: &Action, target: &HashMap<String, Component>) -> String {
    if let Some(fw) = action
        .component()
        .and_then(|id| target.get(id))
        .filter(|c| crate::firmware::is_firmware(c))
    {
        let id = &fw.id;
        let digest = crate::firmware::pinned_digest(fw).map_or(String::new(), |d| {
            format!(" (sha256:{})", &d[..SHORT.min(d.len())])
        });
        return match action {
            Action::Add { .. } => format!("flash firmware {id}{digest} onto its device"),
            Action::Start { .. } => format!("firmware {id} runs on its device"),
            Action::Stop { .. } | Action::Remove { .. } => {
                format!("let go of firmware {id} (a device keeps what it runs)")
            }
            other => other.to_string(),
        };
    }
    let Some(f) = action
        .component()
        .and_then(|id| target.get(id))
        .filter(|c| c.as_function().is_some())
    else {
        return action.to_string();
    };
    let id = &f.id;
    match action {
        Action::Add { .. } => match source(f) {
            Some(digest) => format!(
                "deploy function {id}: build its runtime with the source packaged as {digest}"
            ),
            None => format!("deploy function {id}: build its runtime"),
        },
        Action::Route { .. } => {
            format!("subscribe function {id} to its triggers ({})", triggers(f))
        }
        Action::Unroute { .. } => format!("unsubscribe function {id} from its triggers"),
        Action::Start { .. } => format!("start function {id}"),
        Action::Stop { .. } => format!("stop function {id}"),
        Action::Remove { .. } => format!("remove function {id}"),
        other => other.to_string(),
    }
}

/// What a running function's status says: its source and its triggers.
pub fn running(c: &Component) -> String {
    if c.as_function().is_none() {
        return String::new();
    }
    match source(c) {
        Some(digest) => format!("source {digest}; triggers {}", triggers(c)),
        None => format!("triggers {}", triggers(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function() -> Component {
        serde_json::from_value(serde_json::json!({
            "id": "presence", "kind": "function",
            "triggers": ["/sensors/x"],
            "src": format!("./src@sha256:{}", "ab".repeat(32))
        }))
        .unwrap()
    }

    #[test]
    fn a_functions_steps_and_status_say_its_lifecycle() {
        let f = function();
        let target = HashMap::from([(f.id.clone(), f.clone())]);
        let add = step(
            &Action::Add {
                component: "presence".into(),
            },
            &target,
        );
        assert_eq!(
            add,
            "deploy function presence: build its runtime with the source packaged as sha256:abababababab"
        );
        let route = step(
            &Action::Route {
                component: "presence".into(),
            },
            &target,
        );
        assert_eq!(
            route,
            "subscribe function presence to its triggers (/sensors/x → /presence/in/x)"
        );
        assert_eq!(
            step(
                &Action::Add {
                    component: "web".into()
                },
                &target
            ),
            "add web"
        );
        assert_eq!(
            running(&f),
            "source sha256:abababababab; triggers /sensors/x → /presence/in/x"
        );
    }
}
