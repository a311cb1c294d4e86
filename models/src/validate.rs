//! Validation: every problem of a model at once, each with its JSON path.

use crate::index::{FastMap, FastSet};

use crate::component::{Component, ComponentSpec, GatewaySpec, Kind};
use crate::cycles::Graph;
use crate::diagnostic::{JsonPath, Problem};
use crate::link::Link;
use crate::located::{Document, Located};
use crate::model::{DeploymentModel, Megamodel, Template};
use crate::resources::{ContainerSpec, Resources};
use crate::subsystem;
use crate::topic;

/// Validates a megamodel: the component graph and the subsystem structure.
pub fn validate_megamodel(mm: &Megamodel) -> Vec<Problem> {
    let doc = Document::of_megamodel(mm);
    let mut problems = Vec::new();
    if mm.name.trim().is_empty() {
        problems.push(
            Problem::new(
                JsonPath::root().key("name"),
                "the megamodel has an empty name",
            )
            .expected("a name for the system"),
        );
    }
    let mut seen_subsystems: FastMap<&str, usize> = FastMap::default();
    for (i, s) in mm.subsystems.iter().enumerate() {
        let path = JsonPath::root().key("subsystems").index(i);
        match s.id.as_deref() {
            None => problems.push(
                Problem::new(path, "subsystem has no `id`")
                    .expected("`id`: the subsystem's name, a DNS label such as \"building-a\""),
            ),
            Some(id) => {
                check_id(id, || path.key("id"), "subsystem id", &mut problems);
                if let Some(first) = seen_subsystems.insert(id, i) {
                    problems.push(
                        Problem::new(path.key("id"), format!("duplicate subsystem id `{id}`"))
                            .expected(format!("an id not already used by subsystems[{first}]")),
                    );
                }
            }
        }
    }
    check_graph(&doc, Placeholders::Forbidden, &mut problems);
    problems.extend(subsystem::assign(mm, &doc).problems);
    problems
}

/// Validates one subsystem's deployment model as a gateway receives it. A model
/// with an `id` is one subsystem, so it has exactly one gateway.
pub fn validate_deployment_model(model: &DeploymentModel) -> Vec<Problem> {
    let doc = Document::of_model(model);
    let mut problems = Vec::new();
    if let Some(id) = &model.id {
        check_id(
            id,
            || JsonPath::root().key("id"),
            "subsystem id",
            &mut problems,
        );
        let gateways: Vec<&Located<Component>> = doc
            .components
            .iter()
            .filter(|c| c.item.kind() == Kind::Gateway)
            .collect();
        match gateways.as_slice() {
            [] => problems.push(
                Problem::new(
                    JsonPath::root().key("components"),
                    format!("subsystem `{id}` has no gateway"),
                )
                .expected("a component of kind gateway (it runs the subsystem's agent)"),
            ),
            [_] => {}
            [first, rest @ ..] => {
                for g in rest {
                    problems.push(
                        Problem::new(
                            g.path(),
                            format!("subsystem `{id}` has a second gateway `{}`", g.item.id),
                        )
                        .expected(format!(
                            "one gateway per subsystem; `{}` already runs `{id}`",
                            first.item.id
                        )),
                    );
                }
            }
        }
    }
    check_graph(&doc, Placeholders::Forbidden, &mut problems);
    problems
}

/// Validates a function runtime template: the graph, and exactly one placeholder.
pub fn validate_template(t: &Template) -> Vec<Problem> {
    let doc = Document::of_template(t);
    let mut problems = Vec::new();
    check_graph(&doc, Placeholders::Allowed, &mut problems);
    // Templates do not nest: expansion is one pass, so a function a template
    // brings that names a runtime would reach a gateway with nothing to run.
    for c in doc.components.iter().filter(|c| !c.item.placeholder) {
        if let Some(runtime) = c.item.as_function().and_then(|f| f.runtime.as_ref()) {
            problems.push(
                Problem::new(
                    c.path().key("runtime"),
                    format!("templates do not nest: `{}` names runtime template `{runtime}`", c.item.id),
                )
                .expected("a template's own functions carry their `resources`; only the megamodel's functions name a runtime"),
            );
        }
    }
    let placeholders: Vec<&Located<Component>> = doc
        .components
        .iter()
        .filter(|c| c.item.placeholder)
        .collect();
    match placeholders.as_slice() {
        [] => problems.push(
            Problem::new(
                JsonPath::root().key("components"),
                "the template has no placeholder",
            )
            .expected(
                "exactly one component with `\"placeholder\": true`, which the function refines",
            ),
        ),
        [p] => {
            if !matches!(p.item.kind(), Kind::Service | Kind::Function) {
                problems.push(
                    Problem::new(
                        p.path().key("kind"),
                        format!("a {} cannot be a placeholder", p.item.kind()),
                    )
                    .expected("a placeholder of kind service or function"),
                );
            }
            let container = p.item.spec.resources().and_then(|r| r.container.as_ref());
            if !container.is_some_and(|c| c.image.is_some() || c.build.is_some()) {
                problems.push(
                    Problem::new(
                        p.path().key("resources"),
                        "the placeholder has no container `image` or `build`: nothing would run the function",
                    )
                    .expected("`resources.container.build` (a build context beside the template) or `resources.container.image`"),
                );
            }
        }
        [_, rest @ ..] => {
            for p in rest {
                problems.push(
                    Problem::new(
                        p.path().key("placeholder"),
                        "a second placeholder in the template",
                    )
                    .expected("exactly one placeholder per template"),
                );
            }
        }
    }
    problems
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholders {
    Allowed,
    Forbidden,
}

/// A DNS label: what ids become in container names, labels and topics.
pub fn is_valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `path` is only built for a problem: most ids are valid.
fn check_id(id: &str, path: impl FnOnce() -> JsonPath, what: &str, problems: &mut Vec<Problem>) {
    if !is_valid_id(id) {
        problems.push(
            Problem::new(path(), format!("invalid {what} `{id}`"))
                .expected("a DNS label: 1 to 63 characters among a-z, 0-9 and '-', not starting or ending with '-'"),
        );
    }
}

/// The model's graph with every id looked up once: components numbered by their
/// first appearance (a duplicate id shares its first's number), links by ends.
struct Resolved<'d, 'a> {
    ids: FastMap<&'a str, u32>,
    /// Each number's component.
    components: Vec<&'d Located<'a, Component>>,
    /// The number of each of the document's components.
    number: Vec<u32>,
    /// Each of the document's links' ends, `None` when one is empty or missing.
    ends: Vec<Option<(u32, u32)>>,
    /// Each number's host (by number) and the index of the link that says so.
    host_of: Vec<Option<(u32, usize)>>,
}

impl<'a> Resolved<'_, 'a> {
    fn id(&self, n: u32) -> &'a str {
        &self.components[n as usize].item.id
    }

    fn kind(&self, n: u32) -> Kind {
        self.components[n as usize].item.kind()
    }
}

fn check_graph(doc: &Document<'_>, placeholders: Placeholders, problems: &mut Vec<Problem>) {
    let mut g = Resolved {
        ids: FastMap::with_capacity_and_hasher(doc.components.len(), Default::default()),
        components: Vec::with_capacity(doc.components.len()),
        number: Vec::with_capacity(doc.components.len()),
        ends: Vec::with_capacity(doc.links.len()),
        host_of: Vec::new(),
    };
    for c in &doc.components {
        check_id(&c.item.id, || c.path().key("id"), "component id", problems);
        let next = u32::try_from(g.components.len()).expect("fewer than 2^32 components");
        let n = *g.ids.entry(&c.item.id).or_insert(next);
        if n == next {
            g.components.push(c);
        } else {
            problems.push(
                Problem::new(
                    c.path().key("id"),
                    format!("duplicate component id `{}`", c.item.id),
                )
                .expected(format!(
                    "an id not already used by {}",
                    g.components[n as usize].path()
                )),
            );
        }
        g.number.push(n);
        if c.item.placeholder && placeholders == Placeholders::Forbidden {
            problems.push(
                Problem::new(c.path().key("placeholder"), format!("`{}` is a placeholder outside a template", c.item.id))
                    .expected("placeholders only in runtime templates (examples/templates/); remove `placeholder`"),
            );
        }
        if let (Some(nested), Some(explicit)) = (c.nested_in, c.item.subsystem.as_deref()) {
            if nested != explicit {
                problems.push(
                    Problem::new(c.path().key("subsystem"), format!("`subsystem` says `{explicit}` but the component is inside subsystem `{nested}`"))
                        .expected(format!("`{nested}`, or no `subsystem` field")),
                );
            }
        }
        check_component(c, problems);
    }
    g.host_of = vec![None; g.components.len()];
    check_links(doc, &mut g, placeholders, problems);
}

fn check_component(c: &Located<Component>, problems: &mut Vec<Problem>) {
    let path = &c.path();
    match &c.item.spec {
        ComponentSpec::Function(f) => {
            f.invocation.check(&path.key("invocation"), problems);
            for (i, t) in f.triggers.iter().enumerate() {
                if let Err(e) = topic::check_filter(t) {
                    problems.push(
                        Problem::new(path.key("triggers").index(i), format!("invalid MQTT topic filter `{t}`: {e}"))
                            .expected("an MQTT topic filter such as `/presence/presenceIndicators` or `sensors/+/temperature`"),
                    );
                }
            }
            for field in ["inputs", "outputs"] {
                let streams = if field == "inputs" {
                    &f.inputs
                } else {
                    &f.outputs
                };
                let mut seen = FastSet::default();
                for (i, s) in streams.iter().enumerate() {
                    if s.is_empty() || s.contains(['/', '+', '#', '\0']) {
                        problems.push(
                            Problem::new(path.key(field).index(i), format!("invalid datastream name `{s}`"))
                                .expected("a non-empty name without '/', '+' or '#' (it becomes one topic level)"),
                        );
                    } else if !seen.insert(s) {
                        problems.push(Problem::new(
                            path.key(field).index(i),
                            format!("datastream `{s}` is listed twice"),
                        ));
                    }
                }
            }
            if f.runtime.is_none() && f.resources.is_empty() && !c.item.placeholder {
                problems.push(
                    Problem::new(path.clone(), format!("function `{}` has neither `runtime` nor `resources`", c.item.id))
                        .expected("`runtime`: a template such as \"../templates/shell-function.json\", or explicit `resources`"),
                );
            }
            check_resources(&f.resources, &path.key("resources"), problems);
        }
        ComponentSpec::Service(s) => {
            if s.resources.is_empty() && !c.item.placeholder {
                problems.push(
                    Problem::new(
                        path.clone(),
                        format!("service `{}` has no `resources`", c.item.id),
                    )
                    .expected("`resources` with a `container` or `commands` saying how to run it"),
                );
            }
            check_resources(&s.resources, &path.key("resources"), problems);
        }
        ComponentSpec::Proxy(p) => check_resources(&p.resources, &path.key("resources"), problems),
        ComponentSpec::Firmware(f) => {
            if f.resources.flash.is_none() {
                problems.push(
                    Problem::new(
                        path.key("resources"),
                        format!("firmware `{}` has no flash resource", c.item.id),
                    )
                    .expected("`resources.flash` with the `artefact` to flash"),
                );
            }
            if f.resources.container.is_some() {
                problems.push(
                    Problem::new(
                        path.key("resources").key("container"),
                        "firmware cannot run in a container",
                    )
                    .expected("only `resources.flash` on firmware"),
                );
            }
            check_resources(&f.resources, &path.key("resources"), problems);
        }
        ComponentSpec::Device(d) => {
            if d.board.trim().is_empty() {
                problems.push(
                    Problem::new(path.key("board"), "empty board type")
                        .expected("the board type, such as \"uno\" or \"mega\""),
                );
            }
        }
        ComponentSpec::Gateway(g) => check_routes(g, path, problems),
        ComponentSpec::Host(_) | ComponentSpec::External(_) => {}
    }
}

fn check_routes(g: &GatewaySpec, path: &JsonPath, problems: &mut Vec<Problem>) {
    if !g.routes.is_empty() && !g.equipped_with_bridge {
        problems.push(
            Problem::new(
                path.key("routes"),
                "a gateway without a bridge cannot route",
            )
            .expected("`equipped_with_bridge: true`, or no `routes`"),
        );
    }
    let mut seen = FastSet::default();
    for (i, r) in g.routes.iter().enumerate() {
        let at = path.key("routes").index(i);
        if let Err(e) = topic::check_filter(&r.topic) {
            problems.push(
                Problem::new(
                    at.key("topic"),
                    format!("invalid MQTT topic filter `{}`: {e}", r.topic),
                )
                .expected("an MQTT topic filter such as `sensors/#` or `site/+/temperature`"),
            );
        }
        for (field, prefix) in [
            ("local_prefix", &r.local_prefix),
            ("remote_prefix", &r.remote_prefix),
        ] {
            if prefix.contains(['+', '#', '\0']) {
                problems.push(
                    Problem::new(at.key(field), format!("invalid topic prefix `{prefix}`"))
                        .expected("a topic prefix without wildcards, such as `building-a/`"),
                );
            }
        }
        if !seen.insert((r.direction, &r.topic, &r.local_prefix, &r.remote_prefix)) {
            problems.push(Problem::new(at, "this route is listed twice"));
        }
    }
}

fn check_resources(r: &Resources, path: &JsonPath, problems: &mut Vec<Problem>) {
    if let Some(c) = &r.container {
        check_container(c, &path.key("container"), problems);
    }
    if let Some(f) = &r.flash {
        if f.artefact.trim().is_empty() {
            problems.push(
                Problem::new(path.key("flash").key("artefact"), "empty firmware artefact")
                    .expected("the path of the image to flash (an Intel HEX file for AVR boards)"),
            );
        }
        if f.baud == Some(0) {
            problems.push(
                Problem::new(path.key("flash").key("baud"), "baud rate 0")
                    .expected("a baud rate such as 115200"),
            );
        }
        if let Some(h) = &f.health {
            if let Err(e) = regex::Regex::new(h) {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                problems.push(
                    Problem::new(path.key("flash").key("health"), format!("`{h}` is not a regular expression ({first})"))
                        .expected("a regular expression the firmware's health line matches, such as `^\\{\"pir\":`"),
                );
            }
        }
        if let Some(w) = &f.confirm_within {
            match humantime::parse_duration(w.trim()) {
                Ok(d) if !d.is_zero() && d <= std::time::Duration::from_secs(600) => {}
                Ok(_) => problems.push(
                    Problem::new(
                        path.key("flash").key("confirm_within"),
                        format!("`{w}` is out of range"),
                    )
                    .expected("a duration above zero and at most 10m"),
                ),
                Err(e) => problems.push(
                    Problem::new(
                        path.key("flash").key("confirm_within"),
                        format!("`{w}` is not a duration ({e})"),
                    )
                    .expected("a duration such as `10s`"),
                ),
            }
        }
        if let Some(sig) = &f.signature {
            if sig.len() != 128 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(
                    Problem::new(
                        path.key("flash").key("signature"),
                        "not an ed25519 signature",
                    )
                    .expected("128 hex digits: the ed25519 signature of the firmware's SHA-256"),
                );
            }
        }
    }
}

fn check_container(c: &ContainerSpec, path: &JsonPath, problems: &mut Vec<Problem>) {
    match (&c.image, &c.build) {
        (None, None) => problems.push(
            Problem::new(path.clone(), "container has neither `image` nor `build`")
                .expected("`image` (already on the engine) or `build` (a local build context)"),
        ),
        (Some(_), Some(_)) => problems.push(
            Problem::new(path.key("build"), "container has both `image` and `build`")
                .expected("one of `image` or `build`"),
        ),
        (Some(image), None) if image.trim().is_empty() => problems.push(
            Problem::new(path.key("image"), "empty image reference")
                .expected("an image such as \"continuum/flow:1\""),
        ),
        _ => {}
    }
    let mut bound = FastSet::default();
    for (i, p) in c.ports.iter().enumerate() {
        if p.container == 0 || p.host == Some(0) {
            problems.push(
                Problem::new(path.key("ports").index(i), "port 0")
                    .expected("a port between 1 and 65535"),
            );
        }
        if let Some(h) = p.host {
            if !bound.insert((h, p.protocol)) {
                problems.push(
                    Problem::new(
                        path.key("ports").index(i).key("host"),
                        format!("host port {h} is bound twice"),
                    )
                    .expected("each host port at most once"),
                );
            }
        }
    }
    for (k, _) in c
        .env
        .iter()
        .filter(|(k, _)| k.is_empty() || k.contains('='))
    {
        problems.push(
            Problem::new(
                path.key("env").key(k.clone()),
                format!("invalid environment variable name `{k}`"),
            )
            .expected("a non-empty name without '='"),
        );
    }
    check_secrets(c, path, problems);
}

fn check_secrets(c: &ContainerSpec, path: &JsonPath, problems: &mut Vec<Problem>) {
    let mut targets = FastSet::default();
    for (i, s) in c.secrets.iter().enumerate() {
        let at = path.key("secrets").index(i);
        if !crate::resources::SecretRef::valid_name(&s.name) {
            problems.push(
                Problem::new(at.key("name"), format!("`{}` cannot name a secret", s.name))
                    .expected("a file name of the gateway's secrets directory: letters, digits, '.', '_' and '-', not starting with '.'"),
            );
        }
        match (&s.env, &s.file) {
            (Some(_), Some(_)) | (None, None) => problems.push(
                Problem::new(at.clone(), format!("secret `{}` needs exactly one of `env` and `file`", s.name))
                    .expected("`env`: the variable that holds it, or `file`: the absolute path it is mounted at"),
            ),
            (Some(var), None) => {
                if var.is_empty() || var.contains('=') {
                    problems.push(
                        Problem::new(at.key("env"), format!("invalid environment variable name `{var}`"))
                            .expected("a non-empty name without '='"),
                    );
                } else if c.env.contains_key(var) {
                    problems.push(
                        Problem::new(at.key("env"), format!("`{var}` is also set in `env`"))
                            .expected("each variable once: a secret's value is never written in the model"),
                    );
                }
            }
            (None, Some(file)) => {
                if !file.starts_with('/') || file.split('/').any(|p| p == "..") {
                    problems.push(
                        Problem::new(at.key("file"), format!("`{file}` is not an absolute path inside the container"))
                            .expected("an absolute path such as /run/secrets/api-key, without '..'"),
                    );
                }
            }
        }
        let target = s.env.clone().or_else(|| s.file.clone()).unwrap_or_default();
        if !target.is_empty() && !targets.insert(target.clone()) {
            problems.push(
                Problem::new(at, format!("`{target}` receives two secrets"))
                    .expected("each variable or file once"),
            );
        }
    }
}

fn check_links(
    doc: &Document<'_>,
    g: &mut Resolved<'_, '_>,
    placeholders: Placeholders,
    problems: &mut Vec<Problem>,
) {
    // Duplicates: the links with the same ends are chained, newest first, and a
    // new link is compared with those alone (a link is more than its ends).
    const END: usize = usize::MAX;
    let mut newest: FastMap<(u32, u32, bool), usize> = FastMap::default();
    let mut older = vec![END; doc.links.len()];
    let mut seen_dangling: FastMap<&Link, usize> = FastMap::default();
    for (li, l) in doc.links.iter().enumerate() {
        let (a, b) = l.item.endpoints();
        if a.is_empty() || b.is_empty() {
            g.ends.push(None); // a missing endpoint, reported when the link was read
            continue;
        }
        let (fa, fb) = match l.item {
            Link::Hosting { .. } => ("component", "host"),
            Link::Communication(_) => ("from", "to"),
        };
        let (na, nb) = (g.ids.get(a).copied(), g.ids.get(b).copied());
        for (id, n, field) in [(a, na, fa), (b, nb, fb)] {
            if n.is_none() {
                let known: Vec<&str> = g.ids.keys().copied().collect();
                let hint = match crate::schema::suggest(id, &known) {
                    Some(s) => format!("the id of a component of the model; did you mean `{s}`?"),
                    None => "the id of a component of the model".to_owned(),
                };
                problems.push(
                    Problem::new(
                        l.path().key(field),
                        format!("link to missing component `{id}`"),
                    )
                    .expected(hint),
                );
            }
        }
        if a == b {
            problems.push(
                Problem::new(l.path(), format!("`{a}` is linked to itself"))
                    .expected("two different components"),
            );
        }
        let hosting = matches!(l.item, Link::Hosting { .. });
        let (Some(na), Some(nb)) = (na, nb) else {
            if let Some(first) = seen_dangling.insert(l.item, li) {
                problems.push(duplicate_link(l, &doc.links[first].path()));
            }
            g.ends.push(None);
            continue;
        };
        g.ends.push(Some((na, nb)));
        let head = newest.entry((na, nb, hosting)).or_insert(END);
        let mut other = *head;
        while other != END && doc.links[other].item != l.item {
            other = older[other];
        }
        if other != END {
            problems.push(duplicate_link(l, &doc.links[other].path()));
        }
        older[li] = *head;
        *head = li;
        if let Link::Hosting { component, host } = l.item {
            let (hosted, hosting) = (g.kind(na), g.kind(nb));
            if !hosting.can_host(hosted) {
                let expected = match hosted {
                    Kind::Firmware => "firmware is hosted on a device".to_owned(),
                    Kind::Gateway | Kind::Host | Kind::Device | Kind::External => {
                        format!("a {hosted} is not hosted by anything; remove this link")
                    }
                    _ => format!("a {hosted} is hosted on a gateway, a host or a service"),
                };
                problems.push(
                    Problem::new(
                        l.path().key("host"),
                        format!("{hosted} `{component}` cannot be hosted on {hosting} `{host}`"),
                    )
                    .expected(expected),
                );
            }
            if let Some((other, first)) = g.host_of[na as usize].replace((nb, li)) {
                if other != nb {
                    problems.push(
                        Problem::new(
                            l.path(),
                            format!(
                                "`{component}` is hosted twice: on `{}` ({}) and on `{host}`",
                                g.id(other),
                                doc.links[first].path()
                            ),
                        )
                        .expected("one host per component"),
                    );
                }
            }
        }
    }
    // Software hosted nowhere (functions, and what their templates add beside
    // them, may wait for placement; in a template, beside the function is
    // where it runs).
    for (i, c) in doc.components.iter().enumerate() {
        if c.item.kind().needs_host()
            && g.host_of[g.number[i] as usize].is_none()
            && !c.item.placeholder
            && placeholders == Placeholders::Forbidden
            && !c
                .item
                .properties
                .contains_key(crate::placement::FUNCTION_PROPERTY)
        {
            let expected = if c.item.kind() == Kind::Firmware {
                format!("a hosting link {{\"kind\": \"hosting\", \"component\": \"{}\", \"host\": \"<a device>\"}}", c.item.id)
            } else {
                format!("a hosting link {{\"kind\": \"hosting\", \"component\": \"{}\", \"host\": \"<a gateway or host>\"}}", c.item.id)
            };
            problems.push(
                Problem::new(
                    c.path(),
                    format!("{} `{}` is hosted nowhere", c.item.kind(), c.item.id),
                )
                .expected(expected),
            );
        }
        if let ComponentSpec::Proxy(p) = &c.item.spec {
            match g.ids.get(p.device.as_str()).map(|&d| g.kind(d)) {
                Some(Kind::Device) => {}
                Some(kind) => problems.push(
                    Problem::new(
                        c.path().key("device"),
                        format!("proxy device `{}` is a {kind}", p.device),
                    )
                    .expected("the id of a device"),
                ),
                None if p.device.is_empty() => {}
                None => problems.push(
                    Problem::new(
                        c.path().key("device"),
                        format!("proxy refers to missing device `{}`", p.device),
                    )
                    .expected("the id of a device of the model"),
                ),
            }
        }
    }
    check_cycles(doc, g, problems);
    check_deployer_reach(doc, g, problems);
}

fn duplicate_link(l: &Located<'_, Link>, first: &JsonPath) -> Problem {
    Problem::new(l.path(), format!("duplicate link ({})", l.item))
        .expected(format!("each link once; it is already at {first}"))
}

/// Hosting cycles, and cycles of start-order dependencies that go through a
/// hosting link, which would leave no component able to start first. Cycles of
/// communication links alone are accepted: their components start together.
fn check_cycles(doc: &Document<'_>, g: &Resolved<'_, '_>, problems: &mut Vec<Problem>) {
    let n = g.components.len();
    let is_hosting = |li: usize| matches!(doc.links[li].item, Link::Hosting { .. });
    // Each need as (who, what, the link's index), in document order.
    let needs: Vec<(u32, u32, usize)> = doc
        .links
        .iter()
        .zip(&g.ends)
        .enumerate()
        .filter_map(|(li, (l, ends))| {
            let (who, what) = l.item.need_of((*ends)?)?;
            (who != what).then_some((who, what, li))
        })
        .collect();
    // Components on a cycle of communication links start together: those links
    // order nothing, so only the others can close a cycle.
    let communication = Graph::new(
        n,
        needs
            .iter()
            .filter(|(_, _, li)| !is_hosting(*li))
            .map(|&(who, what, _)| (who, what))
            .collect(),
    );
    let group_of = communication.group_of(&communication.cycle_groups());
    let together = |a: u32, b: u32| {
        group_of[a as usize].is_some() && group_of[a as usize] == group_of[b as usize]
    };
    // Each component's needs, as indices into `needs`.
    let by_who = Graph::new(
        n,
        needs
            .iter()
            .enumerate()
            .filter(|(_, &(who, what, li))| is_hosting(li) || !together(who, what))
            .map(|(e, &(who, _, _))| (who, u32::try_from(e).expect("fewer than 2^32 links")))
            .collect(),
    );
    // Iterative DFS with colours; each cycle is reported once, at the link closing it.
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut colour = vec![WHITE; n];
    for &start in &g.number {
        if colour[start as usize] != WHITE {
            continue;
        }
        let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
        let mut trail: Vec<u32> = vec![start];
        colour[start as usize] = GREY;
        while let Some((node, next)) = stack.last_mut() {
            if let Some(&e) = by_who.edges(*node).get(*next) {
                *next += 1;
                let (_, target, li) = needs[e as usize];
                match colour[target as usize] {
                    WHITE => {
                        colour[target as usize] = GREY;
                        stack.push((target, 0));
                        trail.push(target);
                    }
                    GREY => {
                        let from = trail.iter().position(|n| *n == target).unwrap_or(0);
                        let mut cycle: Vec<&str> = trail[from..].iter().map(|&n| g.id(n)).collect();
                        cycle.push(g.id(target));
                        let what = if is_hosting(li) {
                            "hosting cycle"
                        } else {
                            "dependency cycle"
                        };
                        problems.push(
                            Problem::new(doc.links[li].path(), format!("{what}: {}", cycle.join(" -> ")))
                                .expected("a hosting chain that ends at a gateway, host or device, and no component that its own host needs through communication links"),
                        );
                    }
                    _ => {}
                }
            } else {
                colour[*node as usize] = BLACK;
                stack.pop();
                trail.pop();
            }
        }
    }
}

/// A device that needs a deployer must be reachable from a gateway or host: a
/// physical link between them, or a deployer link from software on that machine.
fn check_deployer_reach(doc: &Document<'_>, g: &Resolved<'_, '_>, problems: &mut Vec<Problem>) {
    let machine = |n: u32| matches!(g.kind(n), Kind::Gateway | Kind::Host);
    // The machine a component runs on, following the hosting chain.
    let runs_on_machine = |mut n: u32| {
        for _ in 0..=g.components.len() {
            if machine(n) {
                return true;
            }
            match g.host_of[n as usize] {
                Some((host, _)) => n = host,
                None => return false,
            }
        }
        false
    };
    let device_of = |n: u32| match g.kind(n) {
        Kind::Device => Some(n),
        Kind::Firmware => g.host_of[n as usize].map(|(h, _)| h),
        _ => None,
    };
    let mut reachable = vec![false; g.components.len()];
    for (l, ends) in doc.links.iter().zip(&g.ends) {
        let (Link::Communication(c), Some((from, to))) = (l.item, *ends) else {
            continue;
        };
        if c.physical {
            for (a, b) in [(from, to), (to, from)] {
                if machine(a) {
                    if let Some(d) = device_of(b) {
                        reachable[d as usize] = true;
                    }
                }
            }
        }
        if c.is_deployer && runs_on_machine(from) {
            if let Some(d) = device_of(to) {
                reachable[d as usize] = true;
            }
        }
    }
    for (i, c) in doc.components.iter().enumerate() {
        if let ComponentSpec::Device(d) = &c.item.spec {
            if d.need_deployer && !reachable[g.number[i] as usize] {
                problems.push(
                    Problem::new(c.path().key("need_deployer"), format!("device `{}` needs a deployer but no gateway or host can reach it", c.item.id))
                        .expected(format!("a communication link with `\"physical\": true` between `{}` and the gateway or host wired to it", c.item.id)),
                );
            }
        }
    }
}
