//! Bridge routes: which messages a gateway's bridge carries between its local
//! broker and the global bus, derived from the model.
//!
//! * Each trigger of a function is subscribed on the global bus and
//!   republished locally on `/<function>/in/<stream>`.
//! * Each output of a function, `/<function>/out/<stream>` on the local
//!   broker, is forwarded to the same topic on the global bus.
//! * A gateway may declare static routes, as Mosquitto's bridge does: a topic
//!   filter, a direction, and prefixes rewritten on the way.

use serde::{Deserialize, Serialize};

use crate::component::{Component, ComponentSpec, FunctionSpec};

/// Which way a route carries messages, seen from the local broker (as in
/// Mosquitto's bridge): `in` is global → local, `out` local → global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Global bus to local broker.
    In,
    /// Local broker to global bus.
    Out,
}

impl Direction {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// A route declared on a gateway (`routes`). Messages on
/// `<source prefix><topic>` are republished on `<destination prefix><rest>`,
/// where the source is the global bus for `in` and the local broker for `out`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    /// A topic filter, relative to the prefixes (`sensors/#`).
    pub topic: String,
    /// Which way it carries messages.
    pub direction: Direction,
    /// The prefix on the local broker.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_prefix: String,
    /// The prefix on the global bus.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_prefix: String,
}

/// Where a route's messages go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// Always this topic.
    Topic(String),
    /// The matched topic with `strip` replaced by `prepend`.
    Rewrite {
        /// The prefix removed.
        strip: String,
        /// The prefix put instead.
        prepend: String,
    },
}

/// What in the model a route comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A function's trigger (its filter).
    Trigger(String),
    /// A function's output stream (its name).
    Output(String),
    /// A gateway's static route.
    Static(StaticRoute),
}

/// A route as the bridge runs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    /// The component it belongs to (a function or a gateway).
    pub owner: String,
    /// Which way it carries messages.
    pub direction: Direction,
    /// The filter subscribed on the source side.
    pub filter: String,
    /// Where a message goes.
    pub destination: Destination,
    /// Who the route belongs to, and why.
    pub origin: Origin,
}

impl Route {
    /// The topic a message received on `topic` is republished on.
    pub fn destination_topic(&self, topic: &str) -> String {
        match &self.destination {
            Destination::Topic(t) => t.clone(),
            Destination::Rewrite { strip, prepend } => {
                format!(
                    "{prepend}{}",
                    topic.strip_prefix(strip.as_str()).unwrap_or(topic)
                )
            }
        }
    }

    /// The topic dead letters of this route go to, on the local broker.
    pub fn dead_letter_topic(&self) -> String {
        format!("/{}/dlq", self.owner)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (from, to) = match self.direction {
            Direction::In => ("global", "local"),
            Direction::Out => ("local", "global"),
        };
        let dest = match &self.destination {
            Destination::Topic(t) => t.clone(),
            Destination::Rewrite { strip, prepend } if strip == prepend => "same topic".into(),
            Destination::Rewrite { strip, prepend } => format!("`{strip}` → `{prepend}`"),
        };
        write!(f, "{from} `{}` → {to} {dest}", self.filter)
    }
}

/// The input stream a function's trigger `i` is republished on: its name in
/// `inputs` when there is one, else the trigger's last level that is not a
/// wildcard, else `trigger<i>`.
pub fn input_stream(f: &FunctionSpec, i: usize) -> String {
    if let Some(name) = f.inputs.get(i) {
        return name.clone();
    }
    f.triggers
        .get(i)
        .and_then(|t| {
            crate::topic::shared(t)
                .map_or(t.as_str(), |(_, f)| f)
                .rsplit('/')
                .find(|l| !l.is_empty() && *l != "+" && *l != "#")
        })
        .map_or_else(|| format!("trigger{i}"), str::to_owned)
}

/// The routes a component owns, in the order the model declares them.
pub fn routes_of(c: &Component) -> Vec<Route> {
    match &c.spec {
        ComponentSpec::Function(f) => {
            let mut out: Vec<Route> = f
                .triggers
                .iter()
                .enumerate()
                .map(|(i, t)| Route {
                    owner: c.id.clone(),
                    direction: Direction::In,
                    filter: t.clone(),
                    destination: Destination::Topic(format!("/{}/in/{}", c.id, input_stream(f, i))),
                    origin: Origin::Trigger(t.clone()),
                })
                .collect();
            out.extend(f.outputs.iter().map(|o| {
                let topic = format!("/{}/out/{o}", c.id);
                Route {
                    owner: c.id.clone(),
                    direction: Direction::Out,
                    filter: topic.clone(),
                    destination: Destination::Topic(topic),
                    origin: Origin::Output(o.clone()),
                }
            }));
            out
        }
        ComponentSpec::Gateway(g) => g
            .routes
            .iter()
            .map(|r| {
                let (source, dest) = match r.direction {
                    Direction::In => (&r.remote_prefix, &r.local_prefix),
                    Direction::Out => (&r.local_prefix, &r.remote_prefix),
                };
                Route {
                    owner: c.id.clone(),
                    direction: r.direction,
                    filter: format!("{source}{}", r.topic),
                    destination: Destination::Rewrite {
                        strip: source.clone(),
                        prepend: dest.clone(),
                    },
                    origin: Origin::Static(r.clone()),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Rewrites `c`'s route fields to say what `live` routes it really has: the
/// current model shows the routes the bridge carries, not the ones wanted.
pub fn with_live_routes(c: &mut Component, live: &[Route]) {
    match &mut c.spec {
        ComponentSpec::Function(f) => {
            let triggers: Vec<String> = live
                .iter()
                .filter_map(|r| match &r.origin {
                    Origin::Trigger(t) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            if triggers != f.triggers {
                // Keep each live trigger's stream name, when the model names them.
                if !f.inputs.is_empty() {
                    f.inputs = live
                        .iter()
                        .filter(|r| matches!(r.origin, Origin::Trigger(_)))
                        .filter_map(|r| match &r.destination {
                            Destination::Topic(t) => t.rsplit('/').next().map(str::to_owned),
                            Destination::Rewrite { .. } => None,
                        })
                        .collect();
                }
                f.triggers = triggers;
            }
            f.outputs = live
                .iter()
                .filter_map(|r| match &r.origin {
                    Origin::Output(o) => Some(o.clone()),
                    _ => None,
                })
                .collect();
        }
        ComponentSpec::Gateway(g) => {
            g.routes = live
                .iter()
                .filter_map(|r| match &r.origin {
                    Origin::Static(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::GatewaySpec;

    fn function(id: &str, triggers: &[&str], inputs: &[&str], outputs: &[&str]) -> Component {
        Component {
            id: id.into(),
            name: id.into(),
            subsystem: None,
            properties: Default::default(),
            placeholder: false,
            spec: ComponentSpec::Function(FunctionSpec {
                triggers: triggers.iter().map(|s| s.to_string()).collect(),
                inputs: inputs.iter().map(|s| s.to_string()).collect(),
                outputs: outputs.iter().map(|s| s.to_string()).collect(),
                ..FunctionSpec::default()
            }),
        }
    }

    #[test]
    fn a_function_routes_its_triggers_in_and_its_outputs_out() {
        let f = function(
            "presence",
            &["/presence/presenceIndicators", "sensors/+/#", "a/b"],
            &[],
            &["occupancy"],
        );
        let r = routes_of(&f);
        let shown: Vec<(Direction, &str, String)> = r
            .iter()
            .map(|r| {
                (
                    r.direction,
                    r.filter.as_str(),
                    r.destination_topic(&r.filter),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                (
                    Direction::In,
                    "/presence/presenceIndicators",
                    "/presence/in/presenceIndicators".to_owned()
                ),
                (
                    Direction::In,
                    "sensors/+/#",
                    "/presence/in/sensors".to_owned()
                ),
                (Direction::In, "a/b", "/presence/in/b".to_owned()),
                (
                    Direction::Out,
                    "/presence/out/occupancy",
                    "/presence/out/occupancy".to_owned()
                ),
            ]
        );
        // Named inputs win.
        let f = function("f", &["x/#"], &["readings"], &[]);
        assert_eq!(routes_of(&f)[0].destination_topic("x/1"), "/f/in/readings");
        assert_eq!(routes_of(&f)[0].dead_letter_topic(), "/f/dlq");
    }

    #[test]
    fn static_routes_rewrite_prefixes_like_mosquittos_bridge() {
        let gw = Component {
            id: "gw".into(),
            name: "gw".into(),
            subsystem: None,
            properties: Default::default(),
            placeholder: false,
            spec: ComponentSpec::Gateway(GatewaySpec {
                equipped_with_bridge: true,
                routes: vec![
                    StaticRoute {
                        topic: "temp/#".into(),
                        direction: Direction::In,
                        local_prefix: "site/".into(),
                        remote_prefix: "building-a/".into(),
                    },
                    StaticRoute {
                        topic: "alarms/#".into(),
                        direction: Direction::Out,
                        local_prefix: String::new(),
                        remote_prefix: "building-a/".into(),
                    },
                ],
                ..GatewaySpec::default()
            }),
        };
        let r = routes_of(&gw);
        assert_eq!(r[0].filter, "building-a/temp/#");
        assert_eq!(r[0].destination_topic("building-a/temp/1"), "site/temp/1");
        assert_eq!(r[1].filter, "alarms/#");
        assert_eq!(
            r[1].destination_topic("alarms/fire"),
            "building-a/alarms/fire"
        );
    }

    #[test]
    fn live_routes_show_in_the_component() {
        let target = function("f", &["a/#", "b"], &["x", "y"], &["o"]);
        let mut current = target.clone();
        // Only the first trigger is live.
        let live: Vec<Route> = routes_of(&target).into_iter().take(1).collect();
        with_live_routes(&mut current, &live);
        match &current.spec {
            ComponentSpec::Function(f) => {
                assert_eq!(f.triggers, ["a/#"]);
                assert_eq!(f.inputs, ["x"]);
                assert!(f.outputs.is_empty());
            }
            _ => unreachable!(),
        }
        // All live: unchanged.
        let mut same = target.clone();
        with_live_routes(&mut same, &routes_of(&target));
        assert_eq!(same, target);
    }
}
