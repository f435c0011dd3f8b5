//! `GET /api/openapi.json`: the JSON API described in OpenAPI 3.1, derived by utoipa from the
//! handlers' `#[utoipa::path]` attributes and the types they answer with (the model's, shared
//! with the UI), so the description cannot drift from the code. What each operation needs (a
//! role, or nothing) is taken from the route policy itself, and a test holds the document to
//! that policy: every `/api` route is described, and nothing else.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::{Access, Guarded, Lookup, Policy};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Baton",
        description = "Zero-downtime rolling deploys behind HAProxy. Each operation says what it \
            needs (`x-baton-access`): an API token (`Authorization: Bearer baton_...`) or a \
            session cookie with at least that role (viewer < deployer < admin), or nothing. \
            Errors answer `{\"error\": \"...\"}`."
    ),
    paths(
        crate::api::list_services,
        crate::api::create_deployment,
        crate::api::rollback,
        crate::api::backend_log,
        crate::api::list_deployments,
        crate::api::get_deployment,
        crate::api::deployment_traffic,
        crate::api::deployment_events,
        crate::api::control,
        crate::api::fleet_events,
        crate::api::list_deliveries,
        crate::api::replay_delivery,
        crate::api::list_notifications,
        crate::http::replica,
        crate::auth::routes::me,
        crate::auth::routes::list_users,
        crate::auth::routes::create_user,
        crate::auth::routes::delete_user,
        crate::auth::routes::list_tokens,
        crate::auth::routes::create_token,
        crate::auth::routes::revoke_token,
        crate::auth::routes::list_audit,
        openapi_json,
    ),
    modifiers(&Credentials),
    security(("token" = []), ("session" = [])),
)]
struct ApiDoc;

/// The two ways to sign a request: an API token, or the browser's session cookie.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`baton token create`, or `POST /api/tokens`)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "The session a browser gets at login (`__Host-baton_session` over HTTPS)",
            ))),
        );
    }
}

/// The API's description, with what each operation needs as `policy` says: the extension
/// `x-baton-access` (`viewer`, `deployer`, `admin` or `public`), a sentence in its
/// description, and no security requirement on public operations.
pub fn document(policy: &Policy) -> Value {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut document = serde_json::to_value(document).expect("an OpenAPI document serializes");
    let Some(paths) = document["paths"].as_object_mut() else {
        return document;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            // A described operation the policy lacks is left as it is: the test of the
            // document fails on it.
            let Lookup::Rule(rule) = policy.lookup(&method, path) else {
                continue;
            };
            let needs = match rule.access {
                Access::Public => "Needs no credentials.".to_owned(),
                Access::Role(role) | Access::RoleOrScraper(role) => {
                    format!("Needs the {role} role or above.")
                }
            };
            let description = match operation["description"].as_str() {
                Some(text) if !text.is_empty() => format!("{text}\n\n{needs}"),
                _ => needs,
            };
            operation["description"] = json!(description);
            operation["x-baton-access"] = json!(rule.access.to_string());
            if rule.access == Access::Public {
                operation["security"] = json!([{}]);
            }
        }
    }
    document
}

/// `GET /api/openapi.json`, whose document is published once the whole router's policy is
/// known (`startup` does it before serving).
#[derive(Clone, Default)]
pub struct Published(Arc<OnceLock<String>>);

impl Published {
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Guarded<S> {
        // Public: it describes Baton's code, not anything a Baton holds.
        Guarded::new()
            .get("/api/openapi.json", Access::Public, openapi_json)
            .with_state(self.clone())
    }

    /// Describes the API with what `policy` says each route needs.
    pub fn publish(&self, policy: &Policy) {
        let text = serde_json::to_string(&document(policy)).expect("JSON serializes");
        if self.0.set(text).is_err() {
            tracing::warn!("the API description was published twice; the first one stays");
        }
    }
}

/// This description of the JSON API, in OpenAPI 3.1.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json(State(published): State<Published>) -> impl IntoResponse {
    let text = published
        .0
        .get()
        .expect("startup publishes the API description before serving")
        .clone();
    ([(header::CONTENT_TYPE, "application/json")], text)
}
