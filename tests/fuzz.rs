//! Hostile input: arbitrary bytes and arbitrary JSON into the codec, the
//! parsers and every request body. Nothing panics, nothing answers 5xx, and
//! decoding never allocates what the input merely claims.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use agentbus::Limits;
use agentbus::blackboard::Bound;
use agentbus::codec;
use agentbus::jobs::validate_stream_id;
use agentbus::keys::{Ident, TenantId};
use axum::body::Body;
use axum::http::Request;
use common::TestEnv;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Value, json};

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
        Self::build(None)
    }

    /// Redis only, with these limits (small ones make large inputs cheap to try).
    fn with_limits(limits: Limits) -> Self {
        Self::build(Some(limits))
    }

    fn build(limits: Option<Limits>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (env, app, token) = runtime.block_on(async {
            let env = match limits {
                Some(limits) => TestEnv::with_limits(limits).await,
                None => TestEnv::with_db().await,
            };
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
            let (status, body) = common::call_raw(&self.app, req).await;
            let mut after = self.env.snapshot().await;
            let mut before = before;
            // The one deliberate exception: an invocation refused before it
            // started is audited (its record and an outbox event).
            if body["error"]["invoke_id"].is_string() {
                let audit = |k: &String| k.ends_with(":outbox") || k.contains(":invoke:inv_");
                before.retain(|k, _| !audit(k));
                after.retain(|k, _| !audit(k));
            }
            (status.as_u16(), after != before)
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

/// Counts as a careless or hostile client writes them: zero, small, at and
/// past every limit, past i64 and u64, negative, fractional, as text.
fn count() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..300).prop_map(Value::from),
        prop::sample::select(vec![
            json!(-1),
            json!(0),
            json!(31),
            json!(32),
            json!(33),
            json!(200),
            json!(201),
            json!(100_000),
            json!(100_001),
            json!(1_000_000_000_000u64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e30),
            json!(0.5),
            json!("12"),
        ]),
    ]
}

/// Stage graphs: chains, fans, random edges (cycles, unknown and repeated
/// names included), up to twice the stage cap and wider than the fan cap.
fn stage_graph() -> impl Strategy<Value = Value> {
    (
        0usize..400,
        0usize..4,
        prop::collection::vec((count(), 0usize..48, any::<u64>()), 1..8),
    )
        .prop_map(|(n, shape, per)| {
            let stages: Vec<Value> = (0..n)
                .map(|i| {
                    let (items, fan, seed) = &per[i % per.len()];
                    let depends: Vec<String> = match shape {
                        0 => vec![format!("s{}", i + 1)],
                        1 => (0..*fan).map(|j| format!("s{j}")).collect(),
                        2 => (0..*fan)
                            .map(|j| {
                                format!("s{}", (seed.wrapping_mul(j as u64 + 7)) % (n as u64 + 2))
                            })
                            .collect(),
                        _ => vec![format!("s{}", i % 3); *fan],
                    };
                    json!({"name": format!("s{i}"), "items": items, "depends_on": depends})
                })
                .collect();
            Value::Array(stages)
        })
}

#[test]
fn stage_graphs_and_counts_of_any_shape_never_get_a_5xx() {
    let f = Fixture::with_limits(Limits::default());
    f.run(
        150,
        (stage_graph(), count(), count()),
        |f, (stages, items, parallelism)| {
            let n = stages.as_array().map_or(0, Vec::len);
            let body = json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t",
                "items": items, "parallelism": parallelism, "stages": stages});
            let started = std::time::Instant::now();
            let status = f.send(
                "POST",
                "/api/v1/jobs/simulate",
                serde_json::to_vec(&body).unwrap(),
            )?;
            prop_assert!(status < 500, "simulate with {n} stages: {status}");
            prop_assert!(n <= 200 || status == 422, "{n} stages answered {status}");
            // Bounded work, not a benchmark: generous for a debug build.
            prop_assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{n} stages took {:?}",
                started.elapsed()
            );
            let spawn = json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t",
                "items": items, "parallelism": parallelism});
            let status = f.send("POST", "/api/v1/jobs", serde_json::to_vec(&spawn).unwrap())?;
            prop_assert!(status < 500, "spawn: {status}");
            Ok(())
        },
    );
}

/// Text with NUL and other control characters, quotes, backslashes and
/// non-ASCII: into every free-text field a client sends.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[\\x00-\\x1f\\x7f\"\\\\a-z\u{00e9}\u{202e}\u{fffd}]{0,24}",
        Just("\0".to_string()),
        Just("bad\u{0}reason".to_string()),
        Just("\u{0}\u{0}\u{0}".to_string()),
    ]
}

#[test]
fn control_characters_and_large_payloads_never_get_a_5xx() {
    const MAX: usize = 4096;
    let f = Fixture::with_limits(Limits {
        max_payload_bytes: MAX,
        ..Limits::default()
    });
    f.runtime.block_on(async {
        let (s, r) = common::call(
            &f.app,
            "POST",
            "/api/v1/agents/register",
            Some(&f.token),
            Some(json!({"agent_id": "a", "instance_id": "fz"})),
        )
        .await;
        assert_eq!(s, 201, "{r}");
    });
    // Around the payload limit: the stored size (MessagePack) decides.
    // Blackboard values have their own, fixed limit (README).
    const BB: usize = agentbus::blackboard::MAX_VALUE_BYTES;
    let size = prop_oneof![0usize..64, (MAX - 64)..(MAX + 64), (4 * MAX)..(4 * MAX + 8)];
    f.run(200, (0usize..8, hostile_text(), size), |f, (case, text, size)| {
        let size = if matches!(case, 4 | 5) && size > 64 { size + BB - MAX } else { size };
        let limit = if matches!(case, 4 | 5) { BB } else { MAX };
        let pad = "x".repeat(size);
        let (method, uri, body) = match case {
            0 => ("POST", "/api/v1/jobs", json!({"orchestrator_agent": "o", "worker_agent": "w", "task": text, "items": [{"t": text, "pad": pad}]})),
            1 => ("POST", "/api/v1/agents/register", json!({"agent_id": "a", "instance_id": "fz", "capabilities": [text, pad]})),
            2 => ("POST", "/api/v1/agents/fz/messages", json!({"from_instance_id": "fz", "message_type": text, "payload": {"t": text, "pad": pad}})),
            3 => ("POST", "/api/v1/agents/fz/messages", json!({"from_instance_id": "fz", "message_type": "m", "payload": format!("{text}{pad}")})),
            4 => ("PUT", "/api/v1/namespaces/ns/entries/k", json!({"value": {"t": text, "pad": pad}})),
            5 => ("PUT", "/api/v1/blackboard/k", json!({"value": format!("{text}{pad}")})),
            6 => ("POST", "/api/v1/invocations", json!({"caller_instance_id": "fz", "target_instance_id": "nobody", "request_payload": {"t": text, "pad": pad}})),
            _ => ("POST", "/api/v1/jobs/00000000-0000-0000-0000-000000000000/cancel", json!({"reason": text})),
        };
        let status = f.send(method, uri, serde_json::to_vec(&body).unwrap())?;
        prop_assert!(status < 500, "{method} {uri} ({size} bytes): {status}");
        prop_assert!(size <= limit + 128 || !(200..300).contains(&status) || case == 1,
            "{method} {uri} stored {size} bytes past a {limit}-byte limit");
        Ok(())
    });
}

#[test]
fn bytes_that_are_not_messagepack_in_streams_never_get_a_5xx() {
    let f = Fixture::with_limits(Limits::default());
    let tenant = f.env.tenant("fuzz");
    let keys = f.env.bus.keys(&tenant);
    // A job with a claimed item, and a registered instance with an inbox.
    let job = f.runtime.block_on(async {
        let app = &f.app;
        let (s, j) = common::call(app, "POST", "/api/v1/jobs", Some(&f.token),
            Some(json!({"orchestrator_agent": "o", "worker_agent": "w", "task": "t", "items": [1, 2]}))).await;
        assert_eq!(s, 201, "{j}");
        let (s, r) = common::call(app, "POST", "/api/v1/agents/register", Some(&f.token),
            Some(json!({"agent_id": "a", "instance_id": "fz"}))).await;
        assert_eq!(s, 201, "{r}");
        j["id"].as_str().unwrap().to_string()
    });
    let job_id: uuid::Uuid = job.parse().unwrap();
    let rx = Ident::new("i", "fz").unwrap();
    f.run(
        150,
        (0usize..3, prop::collection::vec(any::<u8>(), 0..64)),
        |f, (target, bytes)| {
            let (stream, field) = match target {
                0 => (keys.job_results(&job_id), "output"),
                1 => (keys.inbox(&rx), "payload"),
                _ => (keys.job_items(&job_id), "input"),
            };
            f.runtime.block_on(async {
                let mut conn = f.env.conn().await;
                let mut add = redis::cmd("XADD");
                add.arg(&stream)
                    .arg("*")
                    .arg("idx")
                    .arg(0)
                    .arg("id")
                    .arg("fz")
                    .arg(field)
                    .arg(&bytes);
                let _: String = add.query_async(&mut conn).await.unwrap();
            });
            for (method, uri) in [
                ("GET", format!("/api/v1/jobs/{job}/results")),
                ("GET", "/api/v1/agents/fz/messages".to_string()),
                (
                    "POST",
                    "/api/v1/agents/fz/messages/receive?count=5".to_string(),
                ),
                (
                    "POST",
                    format!("/api/v1/jobs/{job}/claim?worker_instance_id=w&count=5"),
                ),
            ] {
                let status = f.send(method, &uri, Vec::new())?;
                prop_assert!(
                    status < 500,
                    "{method} {uri} after {bytes:?} in {field}: {status}"
                );
            }
            Ok(())
        },
    );
}
