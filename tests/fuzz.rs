//! Hostile input: arbitrary bytes and arbitrary JSON into the codec, the
//! parsers and every request body. Nothing panics, nothing answers 5xx, and
//! decoding never allocates what the input merely claims.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use agentbus::blackboard::Bound;
use agentbus::codec;
use agentbus::jobs::validate_stream_id;
use agentbus::keys::{Ident, TenantId};
use axum::body::Body;
use axum::http::Request;
use common::TestEnv;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::Value;
use tower::ServiceExt;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_codec_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode_json(&bytes);
        let _ = codec::decode::<agentbus::jobs::JobSpec>(&bytes);
    }

    #[test]
    fn huge_claimed_lengths_do_not_allocate(len in 1u32..u32::MAX, tag in prop::sample::select(vec![0xdc_u8, 0xdd, 0xde, 0xdf, 0xc5, 0xc6, 0xdb])) {
        // A MessagePack array/map/string header claiming `len` elements, with none following.
        let mut bytes = vec![tag];
        if matches!(tag, 0xdc | 0xde | 0xc5 | 0xda) {
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            bytes.extend_from_slice(&len.to_be_bytes());
        }
        prop_assert!(codec::decode_json(&bytes).is_err());
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(text in ".{0,80}") {
        let _ = TenantId::new(text.clone());
        let _ = Ident::new("f", text.clone());
        let _ = validate_stream_id("f", &text);
        let _ = Bound::parse("f", &text);
        let _ = agentbus::keys::Keyspace::new(&text);
        let _ = agentbus::prices::Prices::parse_overrides(&text);
        let _ = serde_json::from_str::<agentbus::jobs::JobSpec>(&text);
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "items",
            "parallelism",
            "task",
            "value",
            "amount",
            "-1",
            "1e400",
            "inv_0000000000000000"
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "orchestrator_agent",
                    "worker_agent",
                    "task",
                    "items",
                    "parallelism",
                    "timeout_per_item",
                    "max_retries",
                    "aggregate",
                    "value",
                    "ttl",
                    "amount",
                    "fence",
                    "holder",
                    "action",
                    "expected",
                    "agent_id",
                    "instance_id",
                    "from_instance_id",
                    "message_type",
                    "payload",
                    "caller_instance_id",
                    "target_instance_id",
                    "timeout_seconds",
                    "invoke_id",
                    "tenant",
                    "stages",
                    "output",
                    "error_message",
                    "retry",
                    "reason",
                    "x",
                ]),
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// One tenant, token and router per test; its keys are deleted when the test
/// ends, which a `static` fixture never would be.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    env: TestEnv,
    seen: Mutex<BTreeMap<u16, u32>>,
    app: axum::Router,
    token: String,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (env, app, token) = runtime.block_on(async {
            let env = TestEnv::with_db().await;
            env.grant(&env.tenant("fuzz"), 1_000_000).await;
            let token = env.token("fuzz").await;
            let app = env.app();
            (env, app, token)
        });
        Fixture {
            runtime,
            env,
            app,
            token,
            seen: Mutex::default(),
        }
    }

    /// Sends one request; a rejected request (4xx) must leave Redis exactly as it was.
    fn send(&self, method: &str, uri: &str, body: Vec<u8>) -> Result<u16, TestCaseError> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, changed) = self.runtime.block_on(async {
            let before = self.env.snapshot().await;
            let status = self
                .app
                .clone()
                .oneshot(req)
                .await
                .unwrap()
                .status()
                .as_u16();
            (status, self.env.snapshot().await != before)
        });
        *self.seen.lock().unwrap().entry(status).or_default() += 1;
        prop_assert!(
            !(400..500).contains(&status) || !changed,
            "{method} {uri} was rejected with {status} but changed state"
        );
        Ok(status)
    }

    /// Guards against a fuzz run that only ever met the auth layer or the
    /// router: most inputs must reach a handler and be judged there.
    fn assert_handlers_were_reached(&self) {
        let seen = self.seen.lock().unwrap();
        let total: u32 = seen.values().sum();
        let judged: u32 = seen
            .iter()
            .filter(|(s, _)| ![401, 405].contains(*s))
            .map(|(_, n)| n)
            .sum();
        eprintln!("statuses: {seen:?}");
        assert!(
            judged * 2 > total,
            "most requests never reached a handler: {seen:?}"
        );
    }

    /// Runs `cases` generated inputs through `check`, failing with proptest's shrunk input.
    fn run<S: Strategy>(
        &self,
        cases: u32,
        strategy: S,
        check: impl Fn(&Self, S::Value) -> Result<(), TestCaseError>,
    ) {
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        if let Err(e) = runner.run(&strategy, |value| check(self, value)) {
            panic!("{e}");
        }
        self.assert_handlers_were_reached();
    }
}

const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs/simulate"),
    ("POST", "/api/v1/credits/grant"),
    ("POST", "/api/v1/agents/register"),
    ("POST", "/api/v1/agents/fuzz-agent/heartbeat"),
    ("POST", "/api/v1/agents/fuzz-agent/messages"),
    ("POST", "/api/v1/invocations"),
    ("POST", "/api/v1/invocations/respond"),
    ("PUT", "/api/v1/blackboard/k"),
    ("POST", "/api/v1/blackboard/k/increment"),
    ("POST", "/api/v1/blackboard/k/lock"),
    ("PUT", "/api/v1/namespaces/ns/entries/k"),
    ("POST", "/api/v1/namespaces/ns/entries/k/cas"),
    (
        "POST",
        "/api/v1/jobs/00000000-0000-0000-0000-000000000000/cancel",
    ),
    ("POST", "/api/v1/tokens"),
];

#[test]
fn arbitrary_json_bodies_never_get_a_5xx() {
    let f = Fixture::new();
    f.run(
        300,
        (0..ENDPOINTS.len(), json_value()),
        |f, (endpoint, body)| {
            let (method, uri) = ENDPOINTS[endpoint];
            let status = f.send(method, uri, serde_json::to_vec(&body).unwrap())?;
            prop_assert!(status < 500, "{method} {uri} with {body}: {status}");
            Ok(())
        },
    );
}

#[test]
fn arbitrary_bytes_never_get_a_5xx() {
    let f = Fixture::new();
    f.run(
        300,
        (
            0..ENDPOINTS.len(),
            prop::collection::vec(any::<u8>(), 0..128),
        ),
        |f, (endpoint, bytes)| {
            let (method, uri) = ENDPOINTS[endpoint];
            let status = f.send(method, uri, bytes)?;
            prop_assert!(status < 500, "{method} {uri}: {status}");
            Ok(())
        },
    );
}

#[test]
fn arbitrary_paths_and_queries_never_get_a_5xx() {
    let f = Fixture::new();
    let strategy = (
        "[a-zA-Z0-9%._~:-]{0,40}",
        "[a-z_]{1,12}=[a-zA-Z0-9%(.:+-]{0,20}",
    );
    f.run(300, strategy, |f, (segment, query)| {
        for (method, template) in [
            ("GET", "/api/v1/jobs/{}"),
            ("GET", "/api/v1/jobs?{}"),
            ("POST", "/api/v1/jobs/{}/claim?worker_instance_id=w"),
            ("GET", "/api/v1/agents/{}/messages"),
            ("GET", "/api/v1/invocations/{}"),
            ("GET", "/api/v1/namespaces/{}/range"),
            ("GET", "/api/v1/namespaces/ns/range?{}"),
            ("GET", "/api/v1/namespaces/ns/top?{}"),
            ("GET", "/api/v1/invocations?{}"),
            ("GET", "/api/v1/agents?{}"),
        ] {
            let fill = if template.ends_with("?{}") {
                query.as_str()
            } else {
                segment.as_str()
            };
            let uri = template.replace("{}", fill);
            if uri.parse::<axum::http::Uri>().is_err() {
                continue;
            }
            let status = f.send(method, &uri, Vec::new())?;
            prop_assert!(status < 500, "{method} {uri}: {status}");
        }
        Ok(())
    });
}
