//! `[[host]]`: the machines Baton reaches over OpenSSH to run backends on, and how to reach them.
//! `hosts` reads these types; they live here so that the configuration depends on nothing it
//! configures.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::domain::HostName;

/// One `[[host]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    pub name: HostName,
    pub ssh: SshTarget,
    /// The private key to log in with; `None`: the agent's keys and the user's ssh config.
    pub identity_file: Option<PathBuf>,
    /// The `known_hosts` file that pins the host's key; `None`: the user's own. Host keys are
    /// always checked: a host missing from the file is refused, never trusted on first use.
    pub known_hosts: Option<PathBuf>,
    /// Where on the host Baton keeps records and logs, one folder per service. A relative path
    /// is taken from the login user's home directory (the default is `~/.baton`).
    pub state_dir: PathBuf,
}

/// `ssh = "user@address:port"`: whom Baton logs in as, where. Only the address is required;
/// what is left out comes from the user's `~/.ssh/config` (or OpenSSH's defaults), so a
/// `Host` entry there with `ProxyJump` or `User` works as it does for `ssh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    /// A host name, an IPv4 address, or an IPv6 address (written in brackets when a port
    /// follows: `deploy@[2001:db8::2]:22`), as `ssh` takes it.
    pub address: String,
    pub port: Option<u16>,
}

impl SshTarget {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| {
            format!(
                "invalid ssh target {text:?}: {why}; expected user@address[:port], such as \
                 \"deploy@198.18.0.2:22\""
            )
        };
        let (user, rest) = match text.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, text),
        };
        if let Some(user) = user
            && (user.is_empty()
                || !user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(invalid(
                "the user name is empty or has characters a login name cannot",
            ));
        }
        let (address, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (address, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address misses its closing ']'"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("text after ']'"))?,
                ),
            };
            (address, port)
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 address: no port can follow without brackets.
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((address, port)) => (address, Some(port)),
                None => (rest, None),
            }
        };
        let port = port
            .map(|port| {
                port.parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))
            })
            .transpose()?;
        let valid_address = !address.is_empty()
            && !address.starts_with('-')
            && address
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !valid_address {
            return Err(invalid(
                "the address is empty or not a host name or IP address",
            ));
        }
        Ok(Self {
            user: user.map(str::to_owned),
            address: address.to_owned(),
            port,
        })
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match self.port {
            Some(port) if self.address.contains(':') => write!(f, "[{}]:{port}", self.address),
            Some(port) => write!(f, "{}:{port}", self.address),
            None => f.write_str(&self.address),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    name: HostName,
    ssh: String,
    identity_file: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

/// `[[host]]`s, with local paths taken from the file's folder; an error is
/// `([index].key, message)`.
pub(super) fn validate_hosts(
    raw: Vec<RawHost>,
    config_dir: &Path,
) -> Result<Vec<HostSettings>, (String, String)> {
    let mut names = HashSet::new();
    let mut hosts = Vec::with_capacity(raw.len());
    for (index, host) in raw.into_iter().enumerate() {
        let at = |key: &str| format!("[{index}].{key}");
        if !names.insert(host.name.clone()) {
            return Err((
                at("name"),
                format!(
                    "duplicate host name {:?}: each must be unique",
                    host.name.as_str()
                ),
            ));
        }
        let ssh = SshTarget::parse(&host.ssh).map_err(|message| (at("ssh"), message))?;
        let state_dir = match host.state_dir {
            None => PathBuf::from(".baton"),
            Some(dir) => home_relative(&dir).ok_or_else(|| {
                (
                    at("state_dir"),
                    format!(
                        "invalid state directory {:?}: expected an absolute path or one under \
                         the login user's home, such as \"/var/lib/baton\" or \"~/.baton\"",
                        dir.display()
                    ),
                )
            })?,
        };
        hosts.push(HostSettings {
            name: host.name,
            ssh,
            identity_file: host.identity_file.map(|path| config_dir.join(path)),
            known_hosts: host.known_hosts.map(|path| config_dir.join(path)),
            state_dir,
        });
    }
    Ok(hosts)
}

/// `~/x` as `x` (a command over ssh starts in the home directory), `~` as `.`; absolute paths and
/// other relative ones as they are. `None` for `~user/…`, which would need the remote shell.
fn home_relative(dir: &Path) -> Option<PathBuf> {
    let text = dir.to_str()?;
    if text.is_empty() {
        return None;
    }
    match text.strip_prefix('~') {
        None => Some(dir.to_owned()),
        Some("") => Some(PathBuf::from(".")),
        Some(rest) => rest
            .strip_prefix('/')
            .map(|rest| PathBuf::from(if rest.is_empty() { "." } else { rest })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_targets_read_like_ssh_reads_them() {
        let cases = [
            (
                "deploy@198.18.0.2:22",
                Some("deploy"),
                "198.18.0.2",
                Some(22),
            ),
            ("app1.internal", None, "app1.internal", None),
            ("root@app1:2222", Some("root"), "app1", Some(2222)),
            (
                "deploy@[2001:db8::2]:22",
                Some("deploy"),
                "2001:db8::2",
                Some(22),
            ),
            ("2001:db8::2", None, "2001:db8::2", None),
        ];
        for (text, user, address, port) in cases {
            let target = SshTarget::parse(text).unwrap();
            assert_eq!(
                (target.user.as_deref(), target.address.as_str(), target.port),
                (user, address, port),
                "{text}"
            );
            assert_eq!(target.to_string(), text);
        }
    }

    #[test]
    fn bad_ssh_targets_say_what_was_expected() {
        for text in [
            "",
            "deploy@",
            "@host",
            "deploy@host:0",
            "deploy@host:ssh",
            "deploy@[::1",
            "-oProxyCommand=x",
            "dep loy@host",
            "host;rm",
        ] {
            let error = SshTarget::parse(text).unwrap_err();
            assert!(
                error.contains("expected user@address[:port]"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn state_dirs_under_home_are_taken_from_the_login_directory() {
        for (given, taken) in [
            ("~/.baton", ".baton"),
            ("~", "."),
            ("~/", "."),
            ("/var/lib/baton", "/var/lib/baton"),
            ("baton", "baton"),
        ] {
            assert_eq!(home_relative(Path::new(given)), Some(PathBuf::from(taken)));
        }
        assert_eq!(home_relative(Path::new("~deploy/x")), None);
    }
}
