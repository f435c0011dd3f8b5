//! `GET /api/openapi.json`: the JSON API described in OpenAPI 3.1, derived by utoipa from the
//! handlers' `#[utoipa::path]` attributes and the types they answer with (the model's, shared
//! with the UI), so the description cannot drift from the code. A test holds it to the route
//! policy: every `/api` route is described, and nothing else.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::{Access, Guarded};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Baton",
        description = "Zero-downtime rolling deploys behind HAProxy. Every route needs an API \
            token (`Authorization: Bearer baton_...`) or a session cookie with the role each \
            operation names, except this description. Errors answer `{\"error\": \"...\"}`."
    ),
    paths(
        crate::api::list_services,
        crate::api::create_deployment,
        crate::api::rollback,
        crate::api::list_deployments,
        crate::api::get_deployment,
        crate::api::deployment_events,
        crate::api::control,
        crate::api::fleet_events,
        crate::api::list_deliveries,
        crate::api::replay_delivery,
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

/// The API's description, as `GET /api/openapi.json` answers it.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

pub fn routes() -> Guarded<AppState> {
    // Public: it describes Baton's code, not anything a Baton holds.
    Guarded::new().get("/api/openapi.json", Access::Public, openapi_json)
}

/// This description of the JSON API, in OpenAPI 3.1.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
