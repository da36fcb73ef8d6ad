//! The OpenAPI document is the contract: it is served without a token, equals
//! the committed `docs/openapi.json`, and says exactly what the router does:
//! every documented operation is routed, other methods are not, documented
//! integer bounds and enums are the enforced ones, and required bodies are
//! required.

use crate::common;
use std::path::PathBuf;

use axum::http::StatusCode;
use common::{TestEnv, call};
use serde_json::Value;

const DOC_FILE: &str = "docs/openapi.json";

fn document() -> Value {
    agentbus::api::openapi_document()
}

/// Every (method, path, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, methods) in doc["paths"].as_object().expect("paths") {
        for (method, op) in methods.as_object().expect("methods") {
            ops.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    ops
}

/// A path with each `{param}` replaced by a well-formed value.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{job_id}" => "00000000-0000-4000-8000-000000000001",
            "{item_id}" => "1-0",
            s if s.starts_with('{') => "x1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Query parameters the operation requires, with well-formed values.
fn required_query(op: &Value) -> Vec<String> {
    query_params(op)
        .filter(|p| p["required"] == true)
        .map(|p| format!("{}=w1", p["name"].as_str().expect("name")))
        .collect()
}

fn query_params(op: &Value) -> impl Iterator<Item = &Value> {
    op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query")
}

fn with_query(path: &str, mut query: Vec<String>, extra: String) -> String {
    query.push(extra);
    format!("{}?{}", concrete(path), query.join("&"))
}

#[tokio::test]
async fn the_served_document_is_the_generated_one_and_the_committed_one() {
    let env = TestEnv::new().await;
    let app = env.app();
    let (status, served) = call(&app, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "the document needs no token");
    let generated = document();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.0.3");

    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DOC_FILE);
    let pretty = serde_json::to_string_pretty(&generated).expect("json") + "\n";
    if std::env::var_os("AGENTBUS_BLESS").is_some() {
        // Blessing rewrites the file, so the comparison below cannot fail:
        // never in CI, where it must judge the committed document.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "AGENTBUS_BLESS is set in CI: the committed document would not be checked"
        );
        std::fs::write(&file, &pretty).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == pretty,
        "{DOC_FILE} is stale: run `AGENTBUS_BLESS=1 cargo test --test it openapi` \
         (or `agentbus openapi > {DOC_FILE}`) and commit it"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_no_other_method_is() {
    let env = TestEnv::new().await;
    let app = env.app();
    let doc = document();
    let token = env.token("oa").await;
    let ops = operations(&doc);
    assert!(ops.len() >= 40, "only {} operations documented", ops.len());
    for (method, path, op) in &ops {
        let uri = concrete(path);
        let (status, body) = call(&app, method, &uri, None, None).await;
        if op["security"] == Value::Array(vec![]) {
            assert_eq!(status, StatusCode::OK, "{method} {uri}: {body}");
        } else {
            // 401, not 404/405: the route exists and the token is checked first.
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
        }
    }
    for (path, methods) in doc["paths"].as_object().expect("paths") {
        for method in ["GET", "POST", "PUT", "DELETE"] {
            if methods.get(method.to_lowercase()).is_none() {
                let uri = concrete(path);
                let (status, _) = call(&app, method, &uri, Some(&token), None).await;
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is served but not documented"
                );
            }
        }
    }
}

#[test]
fn every_link_names_an_operation_and_its_parameters() {
    let doc = document();
    let ops = operations(&doc);
    let mut links = 0;
    for (_, _, op) in &ops {
        for response in op["responses"].as_object().expect("responses").values() {
            for link in response["links"]
                .as_object()
                .into_iter()
                .flat_map(|l| l.values())
            {
                let target = link["operationId"].as_str().expect("operationId");
                let (_, _, target_op) = ops
                    .iter()
                    .find(|(_, _, o)| o["operationId"] == target)
                    .unwrap_or_else(|| panic!("link to unknown operation {target}"));
                for name in link["parameters"].as_object().expect("parameters").keys() {
                    let declared = target_op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["name"] == name.as_str());
                    assert!(declared, "{target} has no parameter {name}");
                }
                links += 1;
            }
        }
    }
    assert!(links >= 10, "only {links} links");
}

#[tokio::test]
async fn documented_integer_bounds_and_enums_are_the_enforced_ones() {
    // The invocation audit lives in Postgres.
    let env = TestEnv::with_db().await;
    let app = env.app();
    let token = env.token("oa").await;
    let doc = document();
    let mut checked = 0;
    for (method, path, op) in operations(&doc) {
        if op["description"] == "Needs the admin token." || path.ends_with("openapi.json") {
            continue;
        }
        let required = required_query(&op);
        for param in query_params(&op) {
            let name = param["name"].as_str().expect("name");
            let schema = &param["schema"];
            let mut rejected = Vec::new();
            let mut accepted = Vec::new();
            if schema["type"] == "integer" {
                let (lo, hi) = (schema["minimum"].as_i64(), schema["maximum"].as_i64());
                let (lo, hi) = (lo.expect("minimum"), hi.expect("maximum"));
                rejected.extend([(hi + 1).to_string(), (lo - 1).to_string()]);
                accepted.push(lo.to_string());
                // The top of a wait would make the test sleep.
                if !name.starts_with("wait") {
                    accepted.push(hi.to_string());
                }
            }
            if let Some(values) = schema["enum"].as_array() {
                rejected.push("bogus".into());
                accepted.extend(values.iter().map(|v| v.as_str().expect("enum").to_string()));
            }
            for value in rejected {
                let uri = with_query(&path, required.clone(), format!("{name}={value}"));
                let (status, body) = call(&app, &method, &uri, Some(&token), None).await;
                assert_eq!(
                    (status, body["error"]["field"].as_str()),
                    (StatusCode::UNPROCESSABLE_ENTITY, Some(name)),
                    "{method} {uri}: {body}"
                );
                checked += 1;
            }
            for value in accepted {
                let uri = with_query(&path, required.clone(), format!("{name}={value}"));
                let (status, body) = call(&app, &method, &uri, Some(&token), None).await;
                assert!(
                    body["error"]["field"].as_str() != Some(name),
                    "{method} {uri} refused a documented value ({status}): {body}"
                );
                assert!(!status.is_server_error(), "{method} {uri}: {status} {body}");
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "only {checked} parameter values checked");
}

#[tokio::test]
async fn required_bodies_are_required_and_unknown_fields_refused() {
    let env = TestEnv::new().await;
    let app = env.app();
    let token = env.token("oa").await;
    let doc = document();
    for (method, path, op) in operations(&doc) {
        let Some(body) = op.get("requestBody") else {
            continue;
        };
        if op["description"] == "Needs the admin token." {
            continue;
        }
        let uri = with_query(&path, required_query(&op), String::new());
        let (status, answer) = call(&app, &method, &uri, Some(&token), None).await;
        let refused_for_body = answer["error"]["field"] == "body";
        if body["required"] == true {
            assert!(
                status == StatusCode::BAD_REQUEST && refused_for_body,
                "{method} {uri} without a body: {status} {answer}"
            );
        } else {
            assert!(
                !refused_for_body,
                "{method} {uri}: the body is documented optional: {status} {answer}"
            );
        }
        let unknown = serde_json::json!({ "no_such_field": 1 });
        let (status, answer) = call(&app, &method, &uri, Some(&token), Some(unknown)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {uri} with an unknown field: {answer}"
        );
    }
}
