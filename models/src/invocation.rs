//! How a function's handler is invoked: the settings a model may give the
//! function host per function (timeout, concurrency, retries, backoff).
//!
//! They travel to the host as environment variables of the function's
//! runtime, so every runtime template honours them without mentioning them.

use serde::{Deserialize, Serialize};

use crate::diagnostic::{JsonPath, Problem};

/// The environment variable of the per-run timeout (a duration such as `2s`).
pub const ENV_TIMEOUT: &str = "CONTINUUM_TIMEOUT";
/// The environment variable of the number of handler runs at once.
pub const ENV_CONCURRENCY: &str = "CONTINUUM_CONCURRENCY";
/// The environment variable of the retries after a failed run.
pub const ENV_RETRIES: &str = "CONTINUUM_RETRIES";
/// The environment variable of the pause before the first retry (doubled each time).
pub const ENV_RETRY_BACKOFF: &str = "CONTINUUM_RETRY_BACKOFF";

/// The most handler runs at once a model may ask of one function host.
pub const MAX_CONCURRENCY: u32 = 256;
/// The most retries a model may ask for.
pub const MAX_RETRIES: u32 = 100;

/// A function's invocation settings; what is unset keeps the host's default
/// (10 s timeout, 4 at once, 2 retries, 200 ms backoff).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invocation {
    /// How long one run of the handler may take before it is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How many runs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// How many times a failed run is tried again before the message is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The pause before the first retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<String>,
}

impl Invocation {
    /// Whether every setting is left to the host.
    pub fn is_default(&self) -> bool {
        *self == Invocation::default()
    }

    /// The environment of the function host that carries these settings.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(t) = &self.timeout {
            env.push((ENV_TIMEOUT, t.trim().to_owned()));
        }
        if let Some(c) = self.concurrency {
            env.push((ENV_CONCURRENCY, c.to_string()));
        }
        if let Some(r) = self.retries {
            env.push((ENV_RETRIES, r.to_string()));
        }
        if let Some(b) = &self.retry_backoff {
            env.push((ENV_RETRY_BACKOFF, b.trim().to_owned()));
        }
        env
    }

    /// The problems of these settings, `path` being the `invocation` object.
    pub fn check(&self, path: &JsonPath, problems: &mut Vec<Problem>) {
        for (field, value, zero_ok) in [
            ("timeout", &self.timeout, false),
            ("retry_backoff", &self.retry_backoff, true),
        ] {
            let Some(v) = value else { continue };
            match humantime::parse_duration(v.trim()) {
                Ok(d) if d.is_zero() && !zero_ok => problems.push(
                    Problem::new(path.key(field), format!("`{field}` cannot be zero"))
                        .expected("a duration longer than zero, such as \"500ms\" or \"30s\""),
                ),
                Ok(_) => {}
                Err(e) => problems.push(
                    Problem::new(path.key(field), format!("`{v}` is not a duration: {e}"))
                        .expected("a duration with its unit, such as \"500ms\", \"30s\" or \"2m\""),
                ),
            }
        }
        if let Some(c) = self.concurrency {
            if c == 0 || c > MAX_CONCURRENCY {
                problems.push(
                    Problem::new(
                        path.key("concurrency"),
                        format!("concurrency {c} is out of range"),
                    )
                    .expected(format!("from 1 to {MAX_CONCURRENCY} runs at once")),
                );
            }
        }
        if let Some(r) = self.retries {
            if r > MAX_RETRIES {
                problems.push(
                    Problem::new(path.key("retries"), format!("{r} retries is too many"))
                        .expected(format!("from 0 to {MAX_RETRIES}")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_the_hosts_environment() {
        let i = Invocation {
            timeout: Some(" 2s".into()),
            concurrency: Some(3),
            retries: Some(0),
            retry_backoff: None,
        };
        assert_eq!(
            i.env(),
            [
                (ENV_TIMEOUT, "2s".to_owned()),
                (ENV_CONCURRENCY, "3".to_owned()),
                (ENV_RETRIES, "0".to_owned())
            ]
        );
        assert!(Invocation::default().env().is_empty());
    }

    #[test]
    fn bad_settings_name_their_field() {
        let i = Invocation {
            timeout: Some("0s".into()),
            concurrency: Some(0),
            retries: Some(1000),
            retry_backoff: Some("soon".into()),
        };
        let mut problems = Vec::new();
        i.check(&JsonPath::root().key("invocation"), &mut problems);
        let paths: Vec<String> = problems.iter().map(|p| p.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "invocation.timeout",
                "invocation.retry_backoff",
                "invocation.concurrency",
                "invocation.retries"
            ],
            "{problems:?}"
        );
        let mut none = Vec::new();
        Invocation {
            retry_backoff: Some("0s".into()),
            ..Invocation::default()
        }
        .check(&JsonPath::root(), &mut none);
        assert!(none.is_empty(), "{none:?}");
    }
}
