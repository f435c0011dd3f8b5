//! Webhook deliveries as each git host sends them: its real payloads (server/tests/fixtures/
//! webhooks, a byte-for-byte copy of shared/fixtures/webhooks) and its headers, signed with
//! HMAC-SHA256 computed here, independently of Baton's own code.

use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A fixture's bytes, by its path below `tests/fixtures/webhooks`.
pub fn fixture(path: &str) -> Vec<u8> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(path);
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// HMAC-SHA256 of `body` with `secret`, in hex.
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    GitHub,
    GitLab,
    Gitea,
    Forgejo,
    BitbucketCloud,
    BitbucketDataCenter,
}

/// The headers `host` sends with `body`, signed with `secret`, as its documentation shows.
pub fn signed(
    host: Host,
    event: &str,
    delivery: &str,
    body: &[u8],
    secret: &str,
) -> Vec<(String, String)> {
    let hex = hmac_hex(secret, body);
    let pairs: Vec<(&str, String)> = match host {
        Host::GitHub => vec![
            ("x-github-event", event.into()),
            ("x-github-delivery", delivery.into()),
            ("x-hub-signature-256", format!("sha256={hex}")),
        ],
        Host::GitLab => vec![
            ("x-gitlab-event", event.into()),
            ("x-gitlab-event-uuid", delivery.into()),
            ("x-gitlab-instance", "https://gitlab.example.com".into()),
            ("x-gitlab-token", secret.into()),
        ],
        // Gitea sends GitHub's and Gogs' headers too.
        Host::Gitea => vec![
            ("x-github-event", event.into()),
            ("x-github-delivery", delivery.into()),
            ("x-gogs-event", event.into()),
            ("x-gitea-event", event.into()),
            ("x-gitea-delivery", delivery.into()),
            ("x-gitea-signature", hex.clone()),
            ("x-hub-signature-256", format!("sha256={hex}")),
        ],
        Host::Forgejo => vec![
            ("x-gitea-event", event.into()),
            ("x-gitea-delivery", delivery.into()),
            ("x-forgejo-event", event.into()),
            ("x-forgejo-delivery", delivery.into()),
            ("x-forgejo-signature", hex.clone()),
        ],
        Host::BitbucketCloud => vec![
            ("x-event-key", event.into()),
            ("x-request-uuid", delivery.into()),
            (
                "x-hook-uuid",
                "{4f0e2f2a-1b0c-4a7e-9f43-2f0a8e5b8c11}".into(),
            ),
            ("x-attempt-number", "1".into()),
            ("x-hub-signature", format!("sha256={hex}")),
        ],
        Host::BitbucketDataCenter => vec![
            ("x-event-key", event.into()),
            ("x-request-id", delivery.into()),
            ("x-hub-signature", format!("sha256={hex}")),
        ],
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
