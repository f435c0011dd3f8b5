//! Validated values that the rest of Baton can trust: names, versions, addresses, durations.
//!
//! Each type has a private field and is built only by `parse` (or `TryFrom<String>`, which serde
//! uses), so a value that exists is valid. Versions in particular come from outside (API,
//! webhooks) and later reach process environments; the pattern keeps shell metacharacters out.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value was refused. The message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, InvalidValue> {
                check_name(value, $what).map(|()| Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, InvalidValue> {
                check_name(&value, $what).map(|()| Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A service's name, as used in URLs, the CLI and the configuration.
    ServiceName,
    "service name"
);
name_type!(
    /// A backend's name: the HAProxy server name inside its backend.
    BackendName,
    "backend name"
);
name_type!(
    /// A load balancer's name in the configuration.
    LoadBalancerName,
    "load balancer name"
);
name_type!(
    /// A `[[host]]`'s name: a machine Baton reaches over OpenSSH to run backends there.
    HostName,
    "host name"
);

fn check_name(value: &str, what: &str) -> Result<(), InvalidValue> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "invalid {what} {value:?}: expected 1 to 64 characters of letters, digits, '-', '_' \
             or '.', starting with a letter or digit"
        )))
    }
}

/// A version to deploy: a tag, a commit sha, a build number.
///
/// Invariant: matches `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, so it can never carry shell syntax,
/// whitespace or a path separator into a runtime.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

impl Version {
    pub const PATTERN: &'static str = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}";

    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        let valid = !value.is_empty()
            && value.len() <= 128
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "invalid version {value:?}: expected 1 to 128 characters matching {}",
                Self::PATTERN
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Version {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, InvalidValue> {
        Self::parse(&value)
    }
}

impl From<Version> for String {
    fn from(value: Version) -> String {
        value.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A backend's `host:port`, an IP socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackendAddr(SocketAddr);

impl BackendAddr {
    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        SocketAddr::from_str(value).map(Self).map_err(|_| {
            InvalidValue(format!(
                "invalid backend address {value:?}: expected an IP address and port such as \
                 \"127.0.0.1:8001\" or \"[::1]:8001\""
            ))
        })
    }

    pub fn socket_addr(self) -> SocketAddr {
        self.0
    }

    pub fn port(self) -> u16 {
        self.0.port()
    }
}

impl TryFrom<String> for BackendAddr {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, InvalidValue> {
        Self::parse(&value)
    }
}

impl From<BackendAddr> for String {
    fn from(value: BackendAddr) -> String {
        value.0.to_string()
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a rollout replaces each backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Take the backend out, stop the old version, start the new one in its place, put it back:
    /// the service runs one backend short (per batch) during each step.
    #[default]
    Rolling,
    /// Start the new version beside the old one on the backend's other address, put it in
    /// rotation, and only then drain the old one, keep it for `overlap` and stop it: the
    /// service never runs short.
    Surge,
}

/// Which of a backend's two addresses an instance runs on. A surge rollout starts the next
/// version on the other one, so the two alternate from rollout to rollout; a rolling one
/// replaces the instance where it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The backend's `address`.
    #[default]
    Address,
    /// The backend's `surge_address`.
    SurgeAddress,
}

impl Slot {
    /// The other address: where the next version starts in a surge.
    pub fn other(self) -> Self {
        match self {
            Self::Address => Self::SurgeAddress,
            Self::SurgeAddress => Self::Address,
        }
    }

    /// The word stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::SurgeAddress => "surge_address",
        }
    }

    pub fn parse(word: &str) -> Result<Self, InvalidValue> {
        match word {
            "address" => Ok(Self::Address),
            "surge_address" => Ok(Self::SurgeAddress),
            other => Err(InvalidValue(format!(
                "unknown slot {other:?}: expected \"address\" or \"surge_address\""
            ))),
        }
    }
}

/// A duration written the human way in configuration: `"250ms"`, `"2s"`, `"1m30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        humantime::parse_duration(value).map(Self).map_err(|_| {
            InvalidValue(format!(
                "invalid duration {value:?}: expected a number with a unit, such as \"250ms\", \
                 \"2s\" or \"1m30s\""
            ))
        })
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl TryFrom<String> for Duration {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, InvalidValue> {
        Self::parse(&value)
    }
}

impl From<Duration> for String {
    fn from(value: Duration) -> String {
        humantime::format_duration(value.0).to_string()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_accept_tags_and_shas() {
        for ok in ["v1", "v2.3.4", "1.0.0-rc.1", "3f2a9c1e", "build_42"] {
            assert_eq!(Version::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn versions_refuse_shell_syntax_and_paths() {
        for bad in [
            "",
            "-rf",
            ".hidden",
            "v1; rm -rf /",
            "$(id)",
            "`id`",
            "v1 v2",
            "a/b",
            "v1\n",
            "v1|x",
            "v1&",
            "\"v1\"",
            "ü",
        ] {
            let error = Version::parse(bad).unwrap_err().to_string();
            assert!(error.contains("expected"), "{bad:?}: {error}");
        }
        assert!(Version::parse(&"a".repeat(129)).is_err());
        assert!(Version::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn names_refuse_what_haproxy_and_urls_cannot_carry() {
        assert!(ServiceName::parse("api-v2_eu.1").is_ok());
        for bad in ["", "a b", "a/b", "_x", "a#b", &"x".repeat(65)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_need_ip_and_port() {
        assert_eq!(BackendAddr::parse("127.0.0.1:18001").unwrap().port(), 18001);
        assert!(BackendAddr::parse("[::1]:80").is_ok());
        for bad in ["localhost:80", "127.0.0.1", "127.0.0.1:x", ""] {
            assert!(BackendAddr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(Duration::parse("250ms").unwrap().get().as_millis(), 250);
        assert_eq!(Duration::parse("1m30s").unwrap().get().as_secs(), 90);
        for bad in ["", "5", "fast", "-1s"] {
            assert!(Duration::parse(bad).is_err(), "{bad:?}");
        }
    }
}
