//! Where a broker is: `mqtt://[user:password@]host[:port]`, or `mqtts://`
//! for MQTT over TLS (port 8883 unless said).

use std::fmt;

/// A broker's address and the credentials to use there.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// A host name or address (an IPv6 address without brackets).
    pub host: String,
    /// 1883 unless the URL says.
    pub port: u16,
    /// User name and password, percent-decoded.
    pub credentials: Option<(String, String)>,
    /// MQTT over TLS (`mqtts://`).
    pub tls: bool,
}

/// A text that is not a broker URL, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{url}` is not a broker URL: {why} (expected mqtt[s]://[user:password@]host[:port])")]
pub struct UrlError {
    url: String,
    why: &'static str,
}

impl std::str::FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<BrokerUrl, UrlError> {
        let err = |why| UrlError {
            url: s.to_owned(),
            why,
        };
        let url = url::Url::parse(s).map_err(|e| match e {
            url::ParseError::InvalidPort => err("the port is not a number"),
            url::ParseError::EmptyHost => err("no host"),
            _ => err("it does not parse as a URL"),
        })?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(err("the scheme must be mqtt:// or mqtts://")),
        };
        let host = match url.host() {
            None => return Err(err("no host")),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
        };
        if host.is_empty() {
            return Err(err("no host"));
        }
        // Userinfo is percent-encoded in a URL (`p%40ss` for `p@ss`).
        let decode = |part: &str| {
            percent_encoding_decode(part).ok_or_else(|| err("the credentials are not valid UTF-8"))
        };
        let credentials = match (url.username(), url.password()) {
            ("", Some(_)) => return Err(err("empty user name")),
            ("", None) => None,
            (u, p) => Some((decode(u)?, decode(p.unwrap_or(""))?)),
        };
        Ok(BrokerUrl {
            host,
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            credentials,
            tls,
        })
    }
}

/// Percent-decodes one part of a URL's userinfo.
fn percent_encoding_decode(part: &str) -> Option<String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

impl BrokerUrl {
    /// The URL with its password, percent-encoded, for a program that must
    /// connect (never for a log).
    pub fn to_string_with_credentials(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let scheme = self.scheme();
        match &self.credentials {
            Some((u, p)) => format!("{scheme}://{}:{}@{host}:{}", enc(u), enc(p), self.port),
            None => format!("{scheme}://{host}:{}", self.port),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "mqtts"
        } else {
            "mqtt"
        }
    }
}

/// Shown without the password.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme())?;
        if let Some((u, _)) = &self.credentials {
            write!(f, "{u}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtts_is_tls_on_8883() {
        let u: BrokerUrl = "mqtts://u:p@broker.example".parse().unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 8883);
        assert_eq!(u.to_string(), "mqtts://u:***@broker.example:8883");
        let back: BrokerUrl = u.to_string_with_credentials().parse().unwrap();
        assert_eq!(back, u);
        assert!(!"mqtt://h".parse::<BrokerUrl>().unwrap().tls);
    }

    #[test]
    fn credentials_survive_a_round_trip_when_asked_for() {
        let u: BrokerUrl = "mqtt://us%40r:p%3Aw@10.0.0.1:1884".parse().unwrap();
        let back: BrokerUrl = u.to_string_with_credentials().parse().unwrap();
        assert_eq!(back, u);
        assert_eq!(u.credentials, Some(("us@r".into(), "p:w".into())));
    }

    #[test]
    fn parses_and_hides_the_password() {
        let u: BrokerUrl = "mqtt://bridge:s3cret@10.0.0.1:1884".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 1884));
        assert_eq!(u.credentials, Some(("bridge".into(), "s3cret".into())));
        assert_eq!(u.to_string(), "mqtt://bridge:***@10.0.0.1:1884");
        let u: BrokerUrl = "mqtt://[::1]".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1883));
        assert!("http://x".parse::<BrokerUrl>().is_err());
        assert!("mqtt://x:port".parse::<BrokerUrl>().is_err());
        assert!("mqtt://".parse::<BrokerUrl>().is_err());
        // Userinfo is percent-decoded.
        let u: BrokerUrl = "mqtt://us%65r:p%40ss%3Aw+rd@broker.example"
            .parse()
            .unwrap();
        assert_eq!(u.credentials, Some(("user".into(), "p@ss:w+rd".into())));
        assert_eq!((u.host.as_str(), u.port), ("broker.example", 1883));
    }
}
