//! A list page's filters and cursor, kept in its address so a filtered view can be shared.

use leptos_router::params::ParamsMap;

/// `path` with the parameters that are set, in order, their values percent-encoded.
pub fn href(path: &str, params: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", encode(value.as_deref()?))))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// A parameter's value, trimmed; `None` when absent or blank.
pub fn text(query: &ParamsMap, key: &str) -> Option<String> {
    query
        .get(key)
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// A parameter parsed as a number (or anything `FromStr`); `None` when absent or not one.
pub fn number<T: std::str::FromStr>(query: &ParamsMap, key: &str) -> Option<T> {
    text(query, key).and_then(|value| value.parse().ok())
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_set_parameters_are_written_and_values_are_encoded() {
        assert_eq!(
            href(
                "/audit",
                &[
                    ("actor", Some("ada lovelace".into())),
                    ("action", None),
                    ("q", Some("a&b".into()))
                ]
            ),
            "/audit?actor=ada%20lovelace&q=a%26b"
        );
        assert_eq!(href("/audit", &[("before", None)]), "/audit");
    }
}
