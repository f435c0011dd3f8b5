//! `[auth]`: the configuration of sessions, login throttling, password checks, event streams and
//! how Baton sees its own origin behind a proxy. `auth` reads these types; they live here so that
//! the configuration depends on nothing it configures.

use std::time::Duration;

use serde::Deserialize;

use crate::domain;
use crate::origin::Origin;

/// How Baton learns that a request came over HTTPS (for the cookie's `Secure` and the origin
/// the CSRF check expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Https {
    /// When a TLS-ending proxy says `X-Forwarded-Proto: https`.
    #[default]
    FromForwardedProto,
    /// Always (Baton is only ever reached over HTTPS).
    Always,
}

/// Failed logins allowed inside the window before further attempts are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub per_name: u32,
    pub per_address: u32,
    pub window: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            per_name: 5,
            per_address: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub session_ttl: Duration,
    pub throttle: Throttle,
    pub https: Https,
    /// Take the client's address from the last entry of `X-Forwarded-For`. Only behind a proxy
    /// that sets it: otherwise any client could pick the address the throttle and audit see.
    pub trust_forwarded_for: bool,
    /// The origin browsers use to reach Baton (`https://baton.example.com`), when a proxy
    /// rewrites `Host`; by default the request's own `Host` and scheme. The CSRF check expects
    /// it, and the UI shows webhook URLs on it.
    pub public_origin: Option<Origin>,
    /// How many argon2 password checks run at once, and how many may wait.
    pub password_checks: PasswordChecks,
    /// How many event streams one user (all its sessions) or one API token may hold open.
    pub streams_per_caller: u32,
    /// How often an open event stream checks its caller on its own. Changes made through this
    /// Baton end streams at once; this is for changes the `baton` command makes from another
    /// process.
    pub stream_recheck: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 60 * 60),
            throttle: Throttle::default(),
            https: Https::default(),
            trust_forwarded_for: false,
            public_origin: None,
            password_checks: PasswordChecks::default(),
            streams_per_caller: 16,
            stream_recheck: Duration::from_secs(10),
        }
    }
}

/// How many password checks run at once, how many may wait, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordChecks {
    pub at_once: u32,
    pub queue: u32,
    pub wait: Duration,
}

impl Default for PasswordChecks {
    /// Two at once (38 MiB of argon2 memory); 32 waiting, about a second and a half of work
    /// on a small machine; ten seconds at most in line.
    fn default() -> Self {
        Self {
            at_once: 2,
            queue: 32,
            wait: Duration::from_secs(10),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    session_ttl: Option<domain::Duration>,
    https: Option<RawHttps>,
    trust_forwarded_for: Option<bool>,
    public_origin: Option<String>,
    #[serde(default)]
    login_throttle: RawThrottle,
    streams_per_caller: Option<u32>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawHttps {
    ForwardedProto,
    Always,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    per_name: Option<u32>,
    per_address: Option<u32>,
    window: Option<domain::Duration>,
}

impl RawAuth {
    /// The auth configuration; an error is `(key, message)`.
    pub(super) fn validate(self) -> Result<AuthConfig, (String, String)> {
        let defaults = AuthConfig::default();
        let session_ttl = match self.session_ttl {
            Some(ttl) if ttl.get() < std::time::Duration::from_secs(60) => {
                return Err((
                    "session_ttl".into(),
                    format!("{ttl} is too short: expected at least \"1m\", such as \"12h\""),
                ));
            }
            Some(ttl) => ttl.get(),
            None => defaults.session_ttl,
        };
        let public_origin = self
            .public_origin
            .map(|origin| {
                Origin::parse(&origin).map_err(|why| {
                    (
                        "public_origin".to_owned(),
                        format!("{origin:?} is not an origin ({why}): expected the scheme and host browsers use to reach Baton, with no path, such as \"https://baton.example.com\""),
                    )
                })
            })
            .transpose()?;
        let at_least_one = |value: Option<u32>, key: &str, default: u32| match value {
            Some(0) => Err((
                format!("login_throttle.{key}"),
                "0 would refuse every login: expected 1 or more failed logins to allow".to_owned(),
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let throttle = Throttle {
            per_name: at_least_one(
                self.login_throttle.per_name,
                "per_name",
                defaults.throttle.per_name,
            )?,
            per_address: at_least_one(
                self.login_throttle.per_address,
                "per_address",
                defaults.throttle.per_address,
            )?,
            window: self
                .login_throttle
                .window
                .map_or(defaults.throttle.window, domain::Duration::get),
        };
        let streams_per_caller = match self.streams_per_caller {
            Some(0) => {
                return Err((
                    "streams_per_caller".into(),
                    "0 would refuse every live page: expected 1 or more open event streams per user or token".into(),
                ));
            }
            Some(n) => n,
            None => defaults.streams_per_caller,
        };
        Ok(AuthConfig {
            session_ttl,
            throttle,
            streams_per_caller,
            https: match self.https {
                Some(RawHttps::Always) => Https::Always,
                Some(RawHttps::ForwardedProto) => Https::FromForwardedProto,
                None => defaults.https,
            },
            trust_forwarded_for: self
                .trust_forwarded_for
                .unwrap_or(defaults.trust_forwarded_for),
            public_origin,
            ..defaults
        })
    }
}
