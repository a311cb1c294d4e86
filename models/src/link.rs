//! Links: hosting and communication edges between components.

/// An edge of a deployment model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// `component` runs on `host`.
    Hosting {
        /// What runs.
        component: String,
        /// Where it runs.
        host: String,
    },
    /// `from` talks to `to`.
    Communication(Communication),
}

/// A communication link. `from` needs `to`: it is started after `to` and stopped
/// before it, unless the link is physical (wiring only) or a deployer link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Communication {
    /// The component that talks.
    pub from: String,
    /// The component it talks to.
    pub to: String,
    /// `from` deploys `to` (a deploy agent flashing a device): `to` is started after `from`.
    pub is_deployer: bool,
    /// Carries control traffic (commands) rather than data.
    pub is_control: bool,
    /// A physical connection (serial, USB): the host side can reach the device.
    pub physical: bool,
}

impl Link {
    /// `component` runs on `host`.
    pub fn hosting(component: impl Into<String>, host: impl Into<String>) -> Self {
        Link::Hosting {
            component: component.into(),
            host: host.into(),
        }
    }

    /// `from` talks to `to`.
    pub fn communication(from: impl Into<String>, to: impl Into<String>) -> Self {
        Link::Communication(Communication {
            from: from.into(),
            to: to.into(),
            ..Communication::default()
        })
    }

    /// The two component ids the link joins: (component, host) or (from, to).
    pub fn endpoints(&self) -> (&str, &str) {
        match self {
            Link::Hosting { component, host } => (component, host),
            Link::Communication(c) => (&c.from, &c.to),
        }
    }

    /// Whether the link joins `id`.
    pub fn touches(&self, id: &str) -> bool {
        let (a, b) = self.endpoints();
        a == id || b == id
    }

    /// For ordering: the component that needs the other one, and the one it needs.
    /// Physical links carry no ordering.
    pub fn need(&self) -> Option<(&str, &str)> {
        self.need_of(self.endpoints())
    }

    /// [`Link::need`] over the link's ends as the caller names them (their
    /// numbers, say), given in the order of [`Link::endpoints`].
    pub fn need_of<T>(&self, (a, b): (T, T)) -> Option<(T, T)> {
        match self {
            Link::Hosting { .. } => Some((a, b)),
            Link::Communication(c) if c.physical => None,
            Link::Communication(c) if c.is_deployer => Some((b, a)),
            Link::Communication(_) => Some((a, b)),
        }
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Hosting { component, host } => write!(f, "{component} hosted on {host}"),
            Link::Communication(c) => {
                write!(f, "{} -> {}", c.from, c.to)?;
                let flags: Vec<&str> = [
                    (c.is_deployer, "deployer"),
                    (c.is_control, "control"),
                    (c.physical, "physical"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| *n)
                .collect();
                if !flags.is_empty() {
                    write!(f, " ({})", flags.join(", "))?;
                }
                Ok(())
            }
        }
    }
}
