//! `[[notify]]` and `[[service.notify]]`: where Baton tells people about rollouts, and which
//! events. `notify` reads these types; they live here so that the configuration depends on
//! nothing it configures.

use std::fmt;

use app::model::{NotificationEvent, NotifyKind};
use serde::Deserialize;

use super::{WebhookSecret, is_variable_name};

/// One notification target, validated, its URL (and a webhook's signing secret) read from the
/// environment.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub kind: NotifyKind,
    /// The variable the URL was read from: what logs and the attempts' table show.
    pub url_env: String,
    pub url: NotifyUrl,
    /// The key a generic webhook's body is signed with (HMAC-SHA256); `None` for Slack, whose
    /// incoming-webhook URL is itself the secret.
    pub secret: Option<WebhookSecret>,
    /// The events sent; every event when the file does not say.
    pub events: Vec<NotificationEvent>,
}

impl NotifySettings {
    pub fn wants(&self, event: NotificationEvent) -> bool {
        self.events.contains(&event)
    }
}

/// A notification URL. It usually carries a secret (Slack's does), so its `Debug` says only
/// where it goes, and it has no `Display`.
#[derive(Clone)]
pub struct NotifyUrl(url::Url);

impl NotifyUrl {
    /// An `http://` or `https://` URL with a host; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        url::Url::parse(text)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .map(Self)
    }

    /// The URL, to send to.
    pub fn expose(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Debug for NotifyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NotifyUrl({}://{}/***)",
            self.0.scheme(),
            self.0.host_str().unwrap_or("")
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    kind: NotifyKind,
    url_env: toml::Spanned<String>,
    secret_env: Option<toml::Spanned<String>>,
    events: Option<Vec<NotificationEvent>>,
}

/// A key below the `[[notify]]` entry, where in the file, and why.
pub(super) type NotifyProblem = (String, Option<std::ops::Range<usize>>, String);

impl RawNotify {
    /// Checks the entry and reads its URL (and secret) from the variables it names.
    pub(super) fn validate(
        self,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NotifySettings, NotifyProblem> {
        let url_text = read_variable(
            &self.url_env,
            ".url_env",
            || match self.kind {
                NotifyKind::Slack => "the Slack incoming-webhook URL (https://hooks.slack.com/…)",
                NotifyKind::Webhook => "the URL Baton posts each notification to",
            },
            secret,
        )?;
        let url = NotifyUrl::parse(&url_text).ok_or_else(|| {
                (
                    ".url_env".to_owned(),
                    Some(self.url_env.span()),
                    format!(
                        "the environment variable {} does not hold an http:// or https:// URL (its value is not shown: it may be secret)",
                        self.url_env.get_ref()
                    ),
                )
            })?;
        let secret = match (self.kind, &self.secret_env) {
            (NotifyKind::Webhook, Some(secret_env)) => Some(WebhookSecret::new(read_variable(
                secret_env,
                ".secret_env",
                || "the key each notification's body is signed with (HMAC-SHA256)",
                secret,
            )?)),
            (NotifyKind::Webhook, None) => {
                return Err((
                    String::new(),
                    None,
                    "a webhook notification needs `secret_env`, the environment variable holding the key its bodies are signed with, so the receiver can tell them from forgeries".into(),
                ));
            }
            (NotifyKind::Slack, Some(secret_env)) => {
                return Err((
                    ".secret_env".into(),
                    Some(secret_env.span()),
                    "Slack notifications are not signed (the incoming-webhook URL is the secret): remove `secret_env`, or use kind = \"webhook\"".into(),
                ));
            }
            (NotifyKind::Slack, None) => None,
        };
        let events = match self.events {
            None => NotificationEvent::all().to_vec(),
            Some(events) if events.is_empty() => {
                return Err((
                    ".events".into(),
                    None,
                    "an empty list would send nothing: expected some of \"started\", \"succeeded\", \"failed\", \"rolled_back\", \"soak_tripped\" (or leave `events` out for all of them)".into(),
                ));
            }
            Some(events) => events,
        };
        Ok(NotifySettings {
            kind: self.kind,
            url_env: self.url_env.into_inner(),
            url,
            secret,
            events,
        })
    }
}

/// The value of the environment variable `name` names; an error says which key, which
/// variable, and what it should hold.
fn read_variable(
    name: &toml::Spanned<String>,
    key: &str,
    holds: impl Fn() -> &'static str,
    secret: &dyn Fn(&str) -> Option<String>,
) -> Result<String, NotifyProblem> {
    let variable = name.get_ref();
    if !is_variable_name(variable) {
        return Err((
            key.to_owned(),
            Some(name.span()),
            format!(
                "invalid variable name {variable:?}: expected the name of the environment variable that holds {}, such as \"SLACK_WEBHOOK_URL\"",
                holds()
            ),
        ));
    }
    match secret(variable) {
        Some(value) if !value.is_empty() => Ok(value),
        found => Err((
            key.to_owned(),
            Some(name.span()),
            format!(
                "the environment variable {variable} {}: expected it to hold {} (set it before starting Baton, or remove this notification)",
                if found.is_some() {
                    "is empty"
                } else {
                    "is not set"
                },
                holds()
            ),
        )),
    }
}
