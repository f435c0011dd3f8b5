//! What the UI's webhook server functions reach: the same functions as the JSON endpoints.

use app::webhooks::{
    DeliveryOutcome, DeliveryPage, WebhookConfigView, WebhookSetup, WebhookSource,
};

use crate::state::AppState;

/// Answers the UI's webhook server functions (provided as `app::webhooks::Webhooks`).
pub struct UiWebhooks(pub AppState);

impl UiWebhooks {
    /// `path` on Baton's own origin as the auth layer sees it (`[auth] public_origin`, else the
    /// request's host and scheme): the same origin the CSRF check expects. Only the path when
    /// there is no request to tell (the page is not being served).
    fn url(&self, path: &str) -> String {
        let config = &self.0.settings.auth;
        let origin = match leptos::prelude::use_context::<axum::http::request::Parts>() {
            Some(request) => crate::auth::own_origin(&request.headers, &request.uri, config),
            None => config.public_origin.clone(),
        };
        origin.map_or_else(|| path.to_owned(), |origin| origin.url(path))
    }
}

/// A message for the operator; internal errors are logged and reported without detail.
fn message(error: impl Into<crate::http_error::ApiError>) -> String {
    error.into().message()
}

#[async_trait::async_trait]
impl WebhookSource for UiWebhooks {
    fn setup(&self, service: &str) -> Result<WebhookSetup, String> {
        let settings = self
            .0
            .settings
            .service(service)
            .ok_or_else(|| format!("no service is named {service:?}"))?;
        let path = format!("/hooks/{service}");
        Ok(WebhookSetup {
            service: service.to_owned(),
            url: self.url(&path),
            path,
            config: settings.webhook.as_ref().map(|webhook| WebhookConfigView {
                secret_env: webhook.secret_env.clone(),
                branch: webhook.branch.clone(),
                tags: webhook.tags.as_ref().map(ToString::to_string),
                repository: webhook.repository.as_ref().map(ToString::to_string),
            }),
        })
    }

    async fn deliveries(
        &self,
        service: String,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<DeliveryPage, String> {
        super::delivery_page(&self.0, &service, before, limit)
            .await
            .map_err(message)
    }

    async fn replay(&self, id: i64) -> Result<DeliveryOutcome, String> {
        // Routed for admins only (like the API's route); named in the audit log as there.
        let caller = crate::auth::principal().ok_or_else(|| "sign in first".to_owned())?;
        super::replay_by(&self.0, id, &caller.actor(), &crate::auth::client_address())
            .await
            .map_err(message)
    }
}
