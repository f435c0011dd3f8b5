//! The webhook protocol's answers: what Baton tells a git host about a delivery, and the HTTP
//! status of each answer, in one table ([`Answer::status`]).
//!
//! These statuses are not the API's error mapping (`http_error.rs`): they are what git hosts act
//! on (a 5xx is retried, anything else is shown in the host's own delivery list), they are
//! stored with each delivery in Baton's log, and a 2xx can still mean "ignored". So they are
//! decided here, beside the verdicts they go with.

use app::webhooks::DeliveryOutcome;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What Baton decided about a delivery (stored as text in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Verified and deploying: the rollout is being queued.
    Processing,
    Deployed,
    Ignored,
    Ping,
    /// A redelivery of a delivery id, or a body, already processed.
    Duplicate,
    Rejected,
}

impl Verdict {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Deployed => "deployed",
            Self::Ignored => "ignored",
            Self::Ping => "ping",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
        }
    }
}

/// Why a delivery was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `/hooks/{service}` names no configured service, or the fleet no longer has it.
    UnknownService,
    /// The service has no `[service.webhook]`.
    WebhooksOff,
    /// The headers are no git host's that Baton knows, or malformed.
    UnknownHost,
    /// The body is over [`BODY_LIMIT`](super::BODY_LIMIT).
    TooLarge,
    /// The body cannot be read, or is not the payload the host sends.
    Malformed,
    /// The signature or token does not prove the service's secret.
    NotSigned,
    /// The fleet refused to queue the rollout.
    Conflict,
    /// Baton's own failure (its database): the host may retry.
    Internal,
}

/// An answer to a delivery: its verdict, and for a rejection why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    Ping,
    /// What the log says while the rollout is being queued; never sent.
    Processing,
    Deployed,
    Ignored,
    Duplicate,
    Rejected(Refusal),
}

impl Answer {
    pub(super) fn verdict(self) -> Verdict {
        match self {
            Answer::Ping => Verdict::Ping,
            Answer::Processing => Verdict::Processing,
            Answer::Deployed => Verdict::Deployed,
            Answer::Ignored => Verdict::Ignored,
            Answer::Duplicate => Verdict::Duplicate,
            Answer::Rejected(_) => Verdict::Rejected,
        }
    }

    /// The webhook protocol's table: 200 for a ping, 202 for whatever was accepted (deployed,
    /// ignored or a duplicate: the host should not retry), 4xx for what the sender must fix,
    /// 500 for what a retry may fix.
    pub(super) fn status(self) -> StatusCode {
        match self {
            Answer::Ping => StatusCode::OK,
            Answer::Processing | Answer::Deployed | Answer::Ignored | Answer::Duplicate => {
                StatusCode::ACCEPTED
            }
            Answer::Rejected(refusal) => match refusal {
                Refusal::UnknownService => StatusCode::NOT_FOUND,
                Refusal::WebhooksOff => StatusCode::FORBIDDEN,
                Refusal::UnknownHost | Refusal::Malformed => StatusCode::BAD_REQUEST,
                Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::NotSigned => StatusCode::UNAUTHORIZED,
                Refusal::Conflict => StatusCode::CONFLICT,
                Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

/// The HTTP answer for an outcome: its status, and the outcome as JSON.
pub fn response(outcome: DeliveryOutcome) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(outcome)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_rejection_is_an_error_and_only_an_internal_one_asks_for_a_retry() {
        let rejections = [
            Refusal::UnknownService,
            Refusal::WebhooksOff,
            Refusal::UnknownHost,
            Refusal::TooLarge,
            Refusal::Malformed,
            Refusal::NotSigned,
            Refusal::Conflict,
            Refusal::Internal,
        ];
        for answer in [
            Answer::Ping,
            Answer::Processing,
            Answer::Deployed,
            Answer::Ignored,
            Answer::Duplicate,
        ] {
            assert!(answer.status().is_success(), "{answer:?}");
        }
        for refusal in rejections {
            let status = Answer::Rejected(refusal).status();
            assert_eq!(Answer::Rejected(refusal).verdict(), Verdict::Rejected);
            assert_eq!(
                status.is_server_error(),
                refusal == Refusal::Internal,
                "{refusal:?} is {status}"
            );
            assert!(status.is_client_error() || status.is_server_error());
        }
    }
}
