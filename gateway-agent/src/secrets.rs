//! Secrets: a model names them, the gateway holds them — one file per secret
//! in its secrets directory (`--secrets-dir`) — and gives each container the
//! ones it names, as an environment variable or as a read-only file. Their
//! values never leave the gateway: the model, the reports and the logs carry
//! names only, and a failure that would quote a value has it replaced by the
//! secret's name.

use std::path::Path;

use continuum_models::resources::{Mount, SecretRef};

use crate::runtime::WorkloadSpec;

/// A secret that cannot be given.
#[derive(Debug, thiserror::Error)]
#[error("`{component}` needs secret `{name}`: {why}")]
pub struct SecretError {
    /// The component.
    pub component: String,
    /// The secret.
    pub name: String,
    /// Why it cannot be had.
    pub why: String,
}

/// The values given to one workload, to keep out of what is reported.
#[derive(Debug, Default)]
pub struct Given(Vec<(String, String)>);

impl Given {
    /// `text` with every value given replaced by `«secret NAME»`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in &self.0 {
            // One character would blank out half a message: not a secret worth the name.
            if value.trim().len() >= 4 {
                out = out.replace(value.as_str(), &format!("«secret {name}»"));
            }
        }
        out
    }
}

/// Gives `spec` the secrets `refs` names from `dir`.
pub fn give(
    dir: &Path,
    component: &str,
    refs: &[SecretRef],
    spec: &mut WorkloadSpec,
) -> Result<Given, SecretError> {
    let mut given = Given::default();
    for r in refs {
        let fail = |why: String| SecretError {
            component: component.to_owned(),
            name: r.name.clone(),
            why,
        };
        if !SecretRef::valid_name(&r.name) {
            return Err(fail("not a secret's name".into()));
        }
        let path = dir.join(&r.name);
        let bytes = std::fs::read(&path).map_err(|e| {
            fail(match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "this gateway holds no such secret (put it in {})",
                    path.display()
                ),
                _ => format!("cannot read {}: {e}", path.display()),
            })
        })?;
        match (&r.env, &r.file) {
            (Some(var), _) => {
                let value = String::from_utf8(bytes).map_err(|_| {
                    fail("an environment variable takes text, and it is not UTF-8".into())
                })?;
                // A file written by an editor ends with a newline the value does not hold.
                let value = value.strip_suffix('\n').unwrap_or(&value).to_owned();
                spec.env.insert(var.clone(), value.clone());
                given.0.push((r.name.clone(), value));
            }
            (None, Some(file)) => {
                spec.mounts.push(Mount {
                    source: path.display().to_string(),
                    target: file.clone(),
                    read_only: true,
                });
                if let Ok(text) = String::from_utf8(bytes) {
                    given.0.push((r.name.clone(), text.trim_end().to_owned()));
                }
            }
            (None, None) => return Err(fail("neither `env` nor `file` says where it goes".into())),
        }
    }
    Ok(given)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            name: "w".into(),
            image: "i".into(),
            command: vec![],
            env: Default::default(),
            ports: vec![],
            devices: vec![],
            mounts: vec![],
            restart: Default::default(),
            network: None,
            aliases: vec![],
            labels: Default::default(),
        }
    }

    #[test]
    fn secrets_become_variables_and_read_only_files_and_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key"), "s3cr3t-value\n").unwrap();
        std::fs::write(dir.path().join("tls.key"), "-----KEY-----").unwrap();
        let refs = vec![
            SecretRef {
                name: "api-key".into(),
                env: Some("API_KEY".into()),
                file: None,
            },
            SecretRef {
                name: "tls.key".into(),
                env: None,
                file: Some("/run/secrets/tls.key".into()),
            },
        ];
        let mut s = spec();
        let given = give(dir.path(), "web", &refs, &mut s).unwrap();
        assert_eq!(s.env["API_KEY"], "s3cr3t-value");
        assert_eq!(s.mounts[0].target, "/run/secrets/tls.key");
        assert!(s.mounts[0].read_only);
        assert_eq!(
            given.redact("env API_KEY=s3cr3t-value refused"),
            "env API_KEY=«secret api-key» refused"
        );

        let missing = vec![SecretRef {
            name: "db-password".into(),
            env: Some("DB".into()),
            file: None,
        }];
        let e = give(dir.path(), "web", &missing, &mut spec())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`web` needs secret `db-password`") && e.contains("holds no such secret"),
            "{e}"
        );
        let escape = vec![SecretRef {
            name: "../etc/passwd".into(),
            env: Some("X".into()),
            file: None,
        }];
        assert!(give(dir.path(), "web", &escape, &mut spec()).is_err());
    }
}
