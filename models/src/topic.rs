//! MQTT topic names and filters (MQTT 3.1.1 §4.7, MQTT 5 §4.7).

/// Why a topic filter is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty.
    #[error("a topic filter cannot be empty")]
    Empty,
    /// Longer than MQTT allows.
    #[error("a topic filter is at most 65535 bytes long")]
    TooLong,
    /// Holds a NUL character.
    #[error("a topic filter cannot contain the NUL character")]
    Nul,
    /// '#' not alone in the last level.
    #[error("'#' must be alone in the last level (as in `a/b/#`)")]
    MisplacedHash,
    /// '+' not alone in its level.
    #[error("'+' must be alone in its level (as in `a/+/c`)")]
    MisplacedPlus,
    /// A wildcard in a topic name.
    #[error("a topic name cannot contain the wildcards '+' or '#'")]
    Wildcard,
    /// A shared subscription without a usable group or filter.
    #[error("a shared subscription is `$share/<group>/<filter>`: a group without '/', '+' or '#', then a filter")]
    Shared,
}

/// The prefix of an MQTT 5 shared subscription (`$share/<group>/<filter>`):
/// the broker hands each message to one subscriber of the group, which is how
/// functions on several gateways split one workload.
pub const SHARED_PREFIX: &str = "$share/";

/// A shared subscription's group and filter, or `None` for a plain filter.
pub fn shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix(SHARED_PREFIX)?.split_once('/')
}

/// Checks a subscription filter: `+` fills one whole level, `#` is the whole last level.
pub fn check_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let filter = if filter.starts_with(SHARED_PREFIX) {
        match shared(filter) {
            Some((group, f))
                if !group.is_empty() && !group.contains(['+', '#']) && !f.is_empty() =>
            {
                f
            }
            _ => return Err(TopicError::Shared),
        }
    } else {
        filter
    };
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

/// Checks a topic name one publishes to: no wildcards.
pub fn check_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > 65535 {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Whether `filter` matches the topic `name` (a shared subscription matches
/// what its filter matches).
pub fn matches(filter: &str, name: &str) -> bool {
    let filter = shared(filter).map_or(filter, |(_, f)| f);
    let mut f = filter.split('/');
    let mut n = name.split('/');
    // Wildcards at the first level do not match topics starting with '$'.
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in [
            "/presence/presenceIndicators",
            "a/+/c",
            "#",
            "a/#",
            "+",
            "/+",
            "+/+/#",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_filter(""), Err(TopicError::Empty));
        assert_eq!(check_filter("a/#/c"), Err(TopicError::MisplacedHash));
        assert_eq!(check_filter("a/b#"), Err(TopicError::MisplacedHash));
        assert_eq!(check_filter("a/b+/c"), Err(TopicError::MisplacedPlus));
        assert_eq!(check_filter("a\0"), Err(TopicError::Nul));
        assert_eq!(check_name("a/+"), Err(TopicError::Wildcard));
        assert_eq!(check_filter("$share/work/jobs/#"), Ok(()));
        for bad in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert_eq!(check_filter(bad), Err(TopicError::Shared), "{bad}");
        }
        assert_eq!(
            check_filter("$share/g/a/#/b"),
            Err(TopicError::MisplacedHash)
        );
    }

    #[test]
    fn matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("/presence/#", "/presence/room1"));
        assert!(matches("$share/work/jobs/+", "jobs/1"));
        assert!(!matches("$share/work/jobs/+", "$share/work/jobs/1"));
        assert!(!matches("$share/work/jobs/+", "work/jobs/1"));
        assert_eq!(shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(shared("a/b"), None);
    }
}
