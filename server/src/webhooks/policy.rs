//! What a push asks of Baton: deploy a version, or nothing (and why). Pure: no IO, no clock.
//!
//! Invariant: a version leaves this module only after `Version::parse` accepted it, so a ref or
//! sha with shell syntax in it never becomes a rollout. A branch push deploys the pushed commit
//! (which must look like a git object id); a tag push deploys the tag's name. With `repository`
//! set, a push that does not name that repository deploys nothing, whatever its refs.

use super::providers::{Push, RefUpdate};
use crate::domain::Version;
use crate::settings::WebhookSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Deploy {
        version: Version,
        git_ref: String,
        sha: Option<String>,
        reason: String,
    },
    Ignore {
        git_ref: Option<String>,
        sha: Option<String>,
        reason: String,
    },
    /// The payload names a deployable ref but no usable commit: the host (or whoever holds the
    /// secret) sent something no git host sends.
    Malformed {
        git_ref: String,
        sha: Option<String>,
        reason: String,
    },
}

/// A push from another repository than the service's `repository` is ignored; otherwise the
/// first ref update that deploys wins, and without one the push is ignored with every reason.
pub fn decide(push: &Push, webhook: &WebhookSettings) -> Decision {
    let updates = &push.updates;
    if let Some(wanted) = &webhook.repository {
        // The secret may be shared by several repositories (an organisation-wide hook): only
        // the named one deploys.
        let elsewhere = match push.repository.as_deref() {
            Some(pushed) if wanted.matches(pushed) => None,
            Some(pushed) => Some(format!(
                "push from repository {pushed:?}: only pushes from {wanted} deploy (`repository` in [service.webhook])"
            )),
            None => Some(format!(
                "the push names no repository: only pushes from {wanted} deploy (`repository` in [service.webhook])"
            )),
        };
        if let Some(reason) = elsewhere {
            let first = updates.first();
            return Decision::Ignore {
                git_ref: first.map(|u| u.git_ref.clone()),
                sha: first.and_then(|u| u.sha.clone()),
                reason,
            };
        }
    }
    let mut reasons = Vec::new();
    for update in updates {
        match decide_one(update, webhook) {
            ignore @ Decision::Ignore { .. } if updates.len() == 1 => return ignore,
            Decision::Ignore { reason, .. } => reasons.push(reason),
            deploy_or_malformed => return deploy_or_malformed,
        }
    }
    let first = updates.first();
    Decision::Ignore {
        git_ref: first.map(|u| u.git_ref.clone()),
        sha: first.and_then(|u| u.sha.clone()),
        reason: if reasons.is_empty() {
            "the push changed no refs".into()
        } else {
            reasons.join("; ")
        },
    }
}

fn decide_one(update: &RefUpdate, webhook: &WebhookSettings) -> Decision {
    let git_ref = &update.git_ref;
    let ignore = |reason: String| Decision::Ignore {
        git_ref: Some(git_ref.clone()),
        sha: update.sha.clone(),
        reason,
    };
    if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        if update.deleted {
            return ignore(format!(
                "branch {branch} was deleted: there is no commit to deploy"
            ));
        }
        match &webhook.branch {
            Some(wanted) if wanted == branch => {}
            Some(wanted) => {
                return ignore(format!(
                    "push to branch {branch}: only pushes to {wanted} deploy"
                ));
            }
            None => {
                return ignore(format!(
                    "push to branch {branch}: this service deploys tags only (no `branch` in [service.webhook])"
                ));
            }
        }
        let sha = update.sha.as_deref().unwrap_or("");
        let commit = is_object_id(sha)
            .then(|| Version::parse(sha).ok())
            .flatten();
        return match commit {
            Some(version) => Decision::Deploy {
                reason: format!("push to {branch} deploys commit {sha}"),
                version,
                git_ref: git_ref.clone(),
                sha: Some(sha.to_owned()),
            },
            None => Decision::Malformed {
                git_ref: git_ref.clone(),
                sha: update.sha.clone(),
                reason: format!(
                    "the pushed commit {sha:?} is not a git commit id: expected 40 (or 64) hexadecimal digits"
                ),
            },
        };
    }
    if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        if update.deleted {
            return ignore(format!("tag {tag} was deleted: there is nothing to deploy"));
        }
        let Some(pattern) = &webhook.tags else {
            return ignore(format!(
                "tag {tag} was pushed, but this service deploys no tags (add tags = \"v*\" to [service.webhook] to deploy them)"
            ));
        };
        if !pattern.matches(tag) {
            return ignore(format!("tag {tag} does not match the pattern {pattern}"));
        }
        return match Version::parse(tag) {
            Ok(version) => Decision::Deploy {
                reason: format!("tag {tag} matches {pattern} and deploys as version {tag}"),
                version,
                git_ref: git_ref.clone(),
                sha: update.sha.clone(),
            },
            // Git allows tag names the version pattern does not (slashes, `+`, …): the host did
            // nothing wrong, so this is not an error it should retry.
            Err(error) => ignore(format!(
                "tag {tag:?} matches {pattern} but cannot be a version: {error}"
            )),
        };
    }
    ignore(format!(
        "{git_ref:?} is neither a branch (refs/heads/…) nor a tag (refs/tags/…)"
    ))
}

/// 40 hex digits (SHA-1) or 64 (SHA-256 repositories).
fn is_object_id(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{RepositoryName, TagPattern, WebhookSecret};

    const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

    fn webhook(branch: Option<&str>, tags: Option<&str>) -> WebhookSettings {
        WebhookSettings {
            secret_env: "S".into(),
            secret: WebhookSecret::new("x"),
            branch: branch.map(Into::into),
            tags: tags.map(|t| TagPattern::parse(t).unwrap()),
            repository: None,
        }
    }

    /// A push from `acme/api` (the repository the tests' services expect, when they do).
    fn push(updates: &[RefUpdate]) -> Push {
        from("acme/api", updates)
    }

    fn from(repository: &str, updates: &[RefUpdate]) -> Push {
        Push {
            repository: Some(repository.into()),
            updates: updates.to_vec(),
        }
    }

    fn update(git_ref: &str, sha: &str, deleted: bool) -> RefUpdate {
        RefUpdate {
            git_ref: git_ref.into(),
            sha: Some(sha.into()),
            deleted,
        }
    }

    fn outcome(decision: &Decision) -> (&'static str, String) {
        match decision {
            Decision::Deploy { version, .. } => ("deploy", version.to_string()),
            Decision::Ignore { reason, .. } => ("ignore", reason.clone()),
            Decision::Malformed { reason, .. } => ("malformed", reason.clone()),
        }
    }

    #[test]
    fn table() {
        let main_and_tags = webhook(Some("main"), Some("v*"));
        let zeros = "0".repeat(40);
        let cases: &[(&str, RefUpdate, &WebhookSettings, &str, &str)] = &[
            (
                "push to the branch",
                update("refs/heads/main", SHA, false),
                &main_and_tags,
                "deploy",
                SHA,
            ),
            (
                "another branch",
                update("refs/heads/feature", SHA, false),
                &main_and_tags,
                "ignore",
                "only pushes to main deploy",
            ),
            (
                "a branch named like a path",
                update("refs/heads/x/main", SHA, false),
                &main_and_tags,
                "ignore",
                "push to branch x/main",
            ),
            (
                "the branch deleted",
                update("refs/heads/main", &zeros, true),
                &main_and_tags,
                "ignore",
                "branch main was deleted",
            ),
            (
                "a matching tag",
                update("refs/tags/v1.2.0", SHA, false),
                &main_and_tags,
                "deploy",
                "v1.2.0",
            ),
            (
                "a tag that does not match",
                update("refs/tags/release-1", SHA, false),
                &main_and_tags,
                "ignore",
                "does not match the pattern v*",
            ),
            (
                "a tag deleted",
                update("refs/tags/v1.2.0", &zeros, true),
                &main_and_tags,
                "ignore",
                "tag v1.2.0 was deleted",
            ),
            (
                "tags without a pattern",
                update("refs/tags/v1", SHA, false),
                &webhook(Some("main"), None),
                "ignore",
                "deploys no tags",
            ),
            (
                "branches without a branch",
                update("refs/heads/main", SHA, false),
                &webhook(None, Some("v*")),
                "ignore",
                "deploys tags only",
            ),
            (
                "a note ref",
                update("refs/notes/commits", SHA, false),
                &main_and_tags,
                "ignore",
                "neither a branch",
            ),
            (
                "shell in the sha",
                update("refs/heads/main", "$(touch /tmp/pwned)", false),
                &main_and_tags,
                "malformed",
                "not a git commit id",
            ),
            (
                "a short sha",
                update("refs/heads/main", &SHA[..12], false),
                &main_and_tags,
                "malformed",
                "40 (or 64)",
            ),
            (
                "shell in a matching tag",
                update("refs/tags/v1;touch${IFS}x", SHA, false),
                &main_and_tags,
                "ignore",
                "cannot be a version",
            ),
            (
                "backticks in a tag",
                update("refs/tags/v`id`", SHA, false),
                &main_and_tags,
                "ignore",
                "cannot be a version",
            ),
            (
                "a sha-256 repository",
                update("refs/heads/main", &"ab".repeat(32), false),
                &main_and_tags,
                "deploy",
                &"ab".repeat(32),
            ),
        ];
        for (name, update, webhook, kind, detail) in cases {
            let (got, text) = outcome(&decide(&push(std::slice::from_ref(update)), webhook));
            assert_eq!(got, *kind, "{name}: {text}");
            assert!(
                text.contains(detail),
                "{name}: {text:?} should contain {detail:?}"
            );
        }
    }

    #[test]
    fn among_several_refs_the_first_that_deploys_wins() {
        let webhook = webhook(Some("main"), Some("v*"));
        let updates = [
            update("refs/heads/feature", SHA, false),
            update("refs/tags/v2", SHA, false),
            update("refs/heads/main", SHA, false),
        ];
        assert_eq!(
            outcome(&decide(&push(&updates), &webhook)),
            ("deploy", "v2".into())
        );
        let (kind, reason) = outcome(&decide(&push(&updates[..1]), &webhook));
        assert_eq!(kind, "ignore");
        let (_, both) = outcome(&decide(
            &push(&[
                update("refs/heads/a", SHA, false),
                update("refs/heads/b", SHA, false),
            ]),
            &webhook,
        ));
        assert!(
            both.contains("branch a") && both.contains("branch b"),
            "{both}"
        );
        assert!(reason.contains("feature"));
        assert_eq!(
            outcome(&decide(&push(&[]), &webhook)),
            ("ignore", "the push changed no refs".into())
        );
    }

    #[test]
    fn with_a_repository_only_its_pushes_deploy() {
        let acme = WebhookSettings {
            repository: Some(RepositoryName::parse("acme/api").unwrap()),
            ..webhook(Some("main"), Some("v*"))
        };
        let main = [update("refs/heads/main", SHA, false)];
        assert_eq!(
            outcome(&decide(&from("acme/api", &main), &acme)),
            ("deploy", SHA.into())
        );
        assert_eq!(
            outcome(&decide(&from("ACME/Api", &main), &acme)),
            ("deploy", SHA.into()),
            "hosts name repositories case-insensitively"
        );
        // Another repository's push to the very branch and tag that would deploy.
        let both = [
            update("refs/tags/v9", SHA, false),
            update("refs/heads/main", SHA, false),
        ];
        for (pushed, expected) in [
            (
                from("mallory/api", &both),
                "push from repository \"mallory/api\": only pushes from acme/api deploy",
            ),
            (
                from("acme/api-fork", &main),
                "push from repository \"acme/api-fork\": only pushes from acme/api deploy",
            ),
            (
                Push {
                    repository: None,
                    updates: main.to_vec(),
                },
                "the push names no repository: only pushes from acme/api deploy",
            ),
        ] {
            let decision = decide(&pushed, &acme);
            assert_eq!(
                outcome(&decision),
                (
                    "ignore",
                    format!("{expected} (`repository` in [service.webhook])")
                )
            );
            // The log still says which ref was pushed.
            let Decision::Ignore { git_ref, .. } = decision else {
                unreachable!()
            };
            assert_eq!(git_ref, pushed.updates.first().map(|u| u.git_ref.clone()));
        }
        // Without `repository`, any repository the secret was given to deploys.
        assert_eq!(
            outcome(&decide(
                &from("mallory/api", &main),
                &webhook(Some("main"), None)
            )),
            ("deploy", SHA.into())
        );
    }
}
