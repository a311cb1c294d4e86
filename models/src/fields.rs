//! Field-level comparison of components without building their JSON.
//!
//! Each type compares itself with its other version and reports what differs as
//! JSON pointers into the component's JSON form, converting only the changed
//! values to JSON. Unchanged fields cost a comparison and nothing else, which keeps
//! the diff of large models fast.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::component::*;
use crate::diff::FieldChange;
use crate::resources::*;

pub(crate) trait FieldDiff {
    fn field_diff(&self, other: &Self, path: &mut String, out: &mut Vec<FieldChange>);
}

fn json<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn push<T: Serialize + ?Sized>(
    path: &str,
    old: Option<&T>,
    new: Option<&T>,
    out: &mut Vec<FieldChange>,
) {
    out.push(FieldChange {
        path: path.to_owned(),
        old: old.map(json),
        new: new.map(json),
    });
}

/// Runs `f` with `key` appended to `path` (JSON-pointer escaped).
fn at(path: &mut String, key: &str, f: impl FnOnce(&mut String)) {
    let len = path.len();
    path.push('/');
    if key.contains(['~', '/']) {
        path.push_str(&key.replace('~', "~0").replace('/', "~1"));
    } else {
        path.push_str(key);
    }
    f(path);
    path.truncate(len);
}

/// A boxed value compares as what it holds.
impl<T: FieldDiff> FieldDiff for Box<T> {
    fn field_diff(&self, other: &Self, path: &mut String, out: &mut Vec<FieldChange>) {
        (**self).field_diff(other, path, out);
    }
}

/// Values compared and reported as a whole.
macro_rules! leaf {
    ($($t:ty),*) => {$(
        impl FieldDiff for $t {
            fn field_diff(&self, other: &Self, path: &mut String, out: &mut Vec<FieldChange>) {
                if self != other {
                    push(path, Some(self), Some(other), out);
                }
            }
        }
    )*};
}

leaf!(
    String,
    bool,
    u16,
    u32,
    u64,
    Value,
    Access,
    RestartPolicy,
    FlashTool
);

/// Lists are replaced as a whole: their items have no stable key.
impl<T: PartialEq + Serialize> FieldDiff for Vec<T> {
    fn field_diff(&self, other: &Self, path: &mut String, out: &mut Vec<FieldChange>) {
        if self != other {
            push(path, Some(self), Some(other), out);
        }
    }
}

impl<T: FieldDiff + PartialEq + Serialize> FieldDiff for Option<T> {
    fn field_diff(&self, other: &Self, path: &mut String, out: &mut Vec<FieldChange>) {
        match (self, other) {
            (Some(a), Some(b)) => a.field_diff(b, path, out),
            (None, None) => {}
            (a, b) => push(path, a.as_ref(), b.as_ref(), out),
        }
    }
}

impl<V: FieldDiff + PartialEq + Serialize> FieldDiff for BTreeMap<String, V> {
    fn field_diff(&self, other: &Self, path: &mut String, out: &mut Vec<FieldChange>) {
        if self == other {
            return;
        }
        let mut a = self.iter().peekable();
        let mut b = other.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((ka, va)), Some((kb, vb))) if ka == kb => {
                    at(path, ka, |p| va.field_diff(vb, p, out));
                    a.next();
                    b.next();
                }
                (Some((ka, va)), kb) if kb.is_none_or(|(kb, _)| ka < kb) => {
                    at(path, ka, |p| push(p, Some(*va), None, out));
                    a.next();
                }
                (_, Some((kb, vb))) => {
                    at(path, kb, |p| push(p, None, Some(*vb), out));
                    b.next();
                }
                (Some(_), None) => unreachable!("handled by the guard above"),
            }
        }
    }
}

/// Structs whose JSON member names are their field names.
macro_rules! record {
    ($t:ty { $($f:ident),* $(,)? }) => {
        impl FieldDiff for $t {
            fn field_diff(&self, other: &Self, path: &mut String, out: &mut Vec<FieldChange>) {
                if self == other {
                    return;
                }
                $( at(path, stringify!($f), |p| self.$f.field_diff(&other.$f, p, out)); )*
            }
        }
    };
}

record!(Capabilities {
    arch,
    cpus,
    memory_mb,
    docker,
    labels
});
record!(crate::invocation::Invocation {
    timeout,
    concurrency,
    retries,
    retry_backoff
});
record!(Resources {
    container,
    commands,
    flash,
    config
});
record!(ContainerSpec {
    image,
    build,
    command,
    env,
    ports,
    devices,
    mounts,
    restart,
    network
});
record!(BuildSpec {
    context,
    dockerfile,
    args,
    include
});
record!(Commands {
    download,
    install,
    configure,
    start,
    stop
});
record!(FlashSpec {
    tool,
    artefact,
    baud,
    verify,
    health,
    confirm_within,
    signature
});

/// The changes from `a` to `b`, as JSON pointers into the flat component form.
/// `None` when the kinds differ (the caller compares the JSON forms instead).
pub(crate) fn component_diff(a: &Component, b: &Component) -> Option<Vec<FieldChange>> {
    let mut out = Vec::new();
    let p = &mut String::new();
    let o = &mut out;
    at(p, "name", |p| a.name.field_diff(&b.name, p, o));
    at(p, "subsystem", |p| {
        a.subsystem.field_diff(&b.subsystem, p, o)
    });
    at(p, "properties", |p| {
        a.properties.field_diff(&b.properties, p, o)
    });
    at(p, "placeholder", |p| {
        a.placeholder.field_diff(&b.placeholder, p, o)
    });
    macro_rules! fields {
        ($x:ident, $y:ident { $($f:ident),* }) => {{
            $( at(p, stringify!($f), |p| $x.$f.field_diff(&$y.$f, p, o)); )*
        }};
    }
    use ComponentSpec as S;
    match (&a.spec, &b.spec) {
        (S::Gateway(x), S::Gateway(y)) => {
            fields!(
                x,
                y {
                    capabilities,
                    access,
                    equipped_with_deployer,
                    equipped_with_bridge,
                    routes
                }
            )
        }
        (S::Host(x), S::Host(y)) => fields!(
            x,
            y {
                capabilities,
                access
            }
        ),
        (S::Device(x), S::Device(y)) => fields!(
            x,
            y {
                board,
                port,
                need_deployer
            }
        ),
        (S::Service(x), S::Service(y)) => fields!(x, y { resources }),
        (S::Function(x), S::Function(y)) => {
            fields!(
                x,
                y {
                    triggers,
                    inputs,
                    outputs,
                    runtime,
                    src,
                    context,
                    requires,
                    invocation,
                    resources
                }
            )
        }
        (S::Proxy(x), S::Proxy(y)) => fields!(
            x,
            y {
                device,
                baud,
                topic_prefix,
                resources
            }
        ),
        (S::Firmware(x), S::Firmware(y)) => fields!(x, y { resources }),
        (S::External(x), S::External(y)) => fields!(x, y { endpoint }),
        _ => return None,
    }
    Some(out)
}
