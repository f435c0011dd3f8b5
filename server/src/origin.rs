//! An origin (`scheme://host[:port]`): the one parser for the configured `[auth] public_origin`,
//! the origin a request reached Baton at, and the `Origin` a browser sends.
//!
//! Built on the `url` crate (WHATWG URL parsing, as browsers do), so that two spellings of the
//! same origin compare equal: scheme and host lower-case, the scheme's default port dropped,
//! IPv6 addresses in brackets, international names in punycode.

use std::fmt;

use url::Url;

/// An `http` or `https` origin in its serialised form (`https://baton.example.com`,
/// `http://[::1]:8080`). Private field: built only by [`Origin::parse`] or [`Origin::of_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(String);

/// Why a text is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("{0}")]
    NotAUrl(url::ParseError),
    #[error("the scheme is {0:?}: expected http or https")]
    Scheme(String),
    #[error("it has {0}: expected nothing after the host and port but an optional '/'")]
    Extra(&'static str),
}

impl Origin {
    /// Parses an origin as an operator writes it or a browser sends it in `Origin`: `http` or
    /// `https`, a host, an optional port, and at most a trailing `/`. A path, query, fragment
    /// or user name is refused rather than dropped: it means something else was meant.
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        let url = Url::parse(text).map_err(OriginError::NotAUrl)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OriginError::Scheme(url.scheme().to_owned()));
        }
        let extra = if url.path() != "/" {
            Some("a path")
        } else if url.query().is_some() {
            Some("a query")
        } else if url.fragment().is_some() {
            Some("a fragment")
        } else if !url.username().is_empty() || url.password().is_some() {
            Some("a user name")
        } else {
            None
        };
        if let Some(extra) = extra {
            return Err(OriginError::Extra(extra));
        }
        Ok(Self(url.origin().ascii_serialization()))
    }

    /// The origin of a request that reached Baton at `host` (a `Host` header's value, such as
    /// `baton.example:8080`), over HTTPS or not.
    pub fn of_host(https: bool, host: &str) -> Result<Self, OriginError> {
        // A host with a path, or another authority's syntax, must not slip through the format.
        if host.contains(['/', '?', '#', '@', '\\']) {
            return Err(OriginError::Extra("a path or user name in the host"));
        }
        let scheme = if https { "https" } else { "http" };
        Self::parse(&format!("{scheme}://{host}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The absolute URL of `path` (which starts with `/`) on this origin.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> String {
        Origin::parse(text)
            .unwrap_or_else(|error| panic!("{text:?} should parse: {error}"))
            .to_string()
    }

    #[test]
    fn spellings_of_one_origin_are_equal() {
        for (text, origin) in [
            ("https://baton.example.com", "https://baton.example.com"),
            // Case, a trailing slash and the scheme's own port are not part of the origin.
            ("HTTPS://Baton.Example.COM/", "https://baton.example.com"),
            ("https://baton.example.com:443", "https://baton.example.com"),
            ("http://baton.example:80/", "http://baton.example"),
            // Another port is.
            ("http://baton.example:443", "http://baton.example:443"),
            ("https://baton.example:8443", "https://baton.example:8443"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            // IPv6: brackets kept, the address in its short form.
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("https://[2001:DB8:0:0:0:0:0:1]/", "https://[2001:db8::1]"),
            ("https://[2001:db8::1]:443", "https://[2001:db8::1]"),
            // Names outside ASCII compare as browsers send them.
            ("https://bäton.example", "https://xn--bton-loa.example"),
        ] {
            assert_eq!(parsed(text), origin, "{text}");
        }
    }

    #[test]
    fn anything_more_or_less_than_an_origin_is_refused() {
        for (text, why) in [
            ("baton.example.com", "relative URL without a base"),
            ("https://x.example/baton", "a path"),
            ("https://x.example//", "a path"),
            ("https://x.example/?a=1", "a query"),
            ("https://x.example/#top", "a fragment"),
            ("https://ada@x.example", "a user name"),
            ("ftp://x.example", "expected http or https"),
            ("null", "relative URL without a base"),
            ("https://", "empty host"),
            ("http://[::1", "invalid IPv6 address"),
            ("http://x.example:99999", "invalid port number"),
        ] {
            let error = Origin::parse(text).expect_err(text).to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn a_request_origin_comes_from_its_host_and_scheme() {
        let of = |https, host| Origin::of_host(https, host).map(|origin| origin.to_string());
        assert_eq!(
            of(false, "Baton.Example:8080").unwrap(),
            "http://baton.example:8080"
        );
        assert_eq!(
            of(true, "baton.example:443").unwrap(),
            "https://baton.example"
        );
        assert_eq!(of(false, "[::1]:8080").unwrap(), "http://[::1]:8080");
        for bad in ["baton.example/x", "evil@baton.example", "a b", ""] {
            assert!(of(false, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_url_on_the_origin_keeps_the_path() {
        let origin = Origin::parse("https://baton.example.com/").unwrap();
        assert_eq!(
            origin.url("/hooks/api"),
            "https://baton.example.com/hooks/api"
        );
    }
}
