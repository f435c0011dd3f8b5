//! `GET /api/openapi.json` against the route policy of the real application.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::baton::spawn_app;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[tokio::test]
async fn the_openapi_document_describes_every_api_route_of_the_policy_and_nothing_else() {
    let app = spawn_app().await;
    // Public: a client generator needs no token to read it.
    let response = app
        .anonymous
        .get(format!("{}/api/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0", "{document:#}");

    let described: BTreeSet<String> = document["paths"]
        .as_object()
        .expect("the document has paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let routed: BTreeSet<String> = app
        .policy
        .rules()
        .filter(|rule| rule.path.starts_with("/api/"))
        .map(|rule| format!("{} {}", rule.method, rule.path))
        .collect();
    let undocumented: Vec<_> = routed.difference(&described).collect();
    let unrouted: Vec<_> = described.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from the document: {undocumented:?}; described but not routed: {unrouted:?}"
    );
    assert!(
        routed.contains("POST /api/services/{service}/deployments"),
        "{routed:?}"
    );

    // What each operation needs is the policy's word for it.
    for rule in app
        .policy
        .rules()
        .filter(|rule| rule.path.starts_with("/api/"))
    {
        let operation = &document["paths"][&rule.path][rule.method.as_str().to_lowercase()];
        assert_eq!(
            operation["x-baton-access"],
            rule.access.to_string(),
            "{} {}: {operation:#}",
            rule.method,
            rule.path
        );
    }
    let create_user = &document["paths"]["/api/users"]["post"];
    assert_eq!(create_user["x-baton-access"], "admin");
    assert!(
        create_user["description"]
            .as_str()
            .unwrap()
            .ends_with("Needs the admin role or above."),
        "{create_user:#}"
    );
    assert_eq!(
        document["paths"]["/api/openapi.json"]["get"]["security"],
        serde_json::json!([{}]),
        "the public description needs no credentials"
    );
}

#[tokio::test]
async fn the_document_names_the_model_types_the_api_answers_with() {
    let app = spawn_app().await;
    let document: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    let schemas = &document["components"]["schemas"];
    for name in [
        "ServiceStatus",
        "NodeStatus",
        "ServerState",
        "DeploymentDetail",
        "RolloutStatus",
        "StepKind",
        "DeliveryOutcome",
        "ErrorBody",
    ] {
        assert!(schemas.get(name).is_some(), "no schema {name}: {schemas:#}");
    }
    // The vocabulary enums are their words, as the API sends them.
    let words: Vec<Value> = app::model::RolloutStatus::ALL
        .iter()
        .map(|status| serde_json::to_value(status).unwrap())
        .collect();
    assert!(words.contains(&serde_json::json!("rolled_back")));
    assert_eq!(schemas["RolloutStatus"]["enum"], Value::Array(words));
    // A node's status is described as it is sent: HAProxy's word beside the parsed state.
    let node = &schemas["NodeStatus"]["properties"];
    assert!(
        node.get("status").is_some() && node.get("state").is_some(),
        "{node:#}"
    );
    let detail = &document["paths"]["/api/deployments/{id}"]["get"]["responses"]["200"];
    assert_eq!(
        detail["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/DeploymentDetail"
    );
}
