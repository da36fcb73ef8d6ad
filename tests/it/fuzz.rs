//! Hostile input: arbitrary bytes and arbitrary JSON into the codec, the
//! parsers and every request body. Nothing panics, nothing answers 5xx, and
//! decoding never allocates what the input merely claims.

use crate::common;
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

/// Counts the bytes this thread allocates, so a test can show that decoding
/// did not allocate what the input merely claims.
struct Counting;

thread_local! {
    static ALLOCATED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counter is a const-initialised thread-local that never allocates.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + new));
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated by this thread while `f` runs.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(|a| a.get());
    let out = f();
    (out, ALLOCATED.with(|a| a.get()) - before)
}

/// Failures are kept in tests/it/fuzz.proptest-regressions and replayed first.
fn persisted() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    Some(Box::new(
        proptest::test_runner::FileFailurePersistence::Direct("tests/it/fuzz.proptest-regressions"),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: persisted(), ..ProptestConfig::default() })]

    #[test]
    fn the_codec_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode_json(&bytes);
        let _ = codec::decode::<agentbus::jobs::JobSpec>(&bytes);
    }

    #[test]
    fn huge_claimed_lengths_do_not_allocate(len in 1u32..u32::MAX, tag in prop::sample::select(vec![0xdc_u8, 0xdd, 0xde, 0xdf, 0xc5, 0xc6, 0xdb])) {
        // A MessagePack array/map/string header claiming `len` elements (or
        // bytes), with none following. 16-bit headers take a length in
        // 1..=65535 (a 0 would be a valid, empty value).
        let mut bytes = vec![tag];
        let claimed = if matches!(tag, 0xdc | 0xde | 0xc5 | 0xda) {
            let short = (len % u16::MAX as u32) as u16 + 1;
            bytes.extend_from_slice(&short.to_be_bytes());
            short as usize
        } else {
            bytes.extend_from_slice(&len.to_be_bytes());
            len as usize
        };
        let (decoded, bytes_allocated) = allocated_by(|| codec::decode_json(&bytes));
        prop_assert!(decoded.is_err());
        // Whatever is claimed, decoding allocates a few KiB at most (a
        // claimed element count costs at least 16 bytes if believed).
        prop_assert!(bytes_allocated < 16 * 1024, "{bytes_allocated} bytes for a claim of {claimed}");
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
    leaf.prop_recursive(6, 128, 8, |inner| {
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

    /// Redis and Postgres, the tenant granted only `credits`.
    fn with_credit(credits: i64) -> Self {
        let f = Self::build(None);
        f.runtime.block_on(async {
            let t = f.env.tenant("fuzz");
            let b = f.env.bus.balance(&t).await.unwrap();
            // Spend all but `credits` of the fixture's grant.
            let surplus = b.available.decimal() - rust_decimal::Decimal::from(credits);
            let minor = agentbus::money::to_minor("surplus", surplus).unwrap();
            f.env
                .bus
                .move_credits(
                    &t,
                    agentbus::credits::CreditOp::Charge,
                    "fuzz",
                    minor,
                    None,
                    json!({}),
                )
                .await
                .unwrap();
        });
        f
    }

    /// Registers these instances for the tenant.
    fn register(&self, instances: &[&str]) {
        self.runtime.block_on(async {
            let t = self.env.tenant("fuzz");
            for i in instances {
                let reg = agentbus::agents::registry::Registration::new("fuzz")
                    .unwrap()
                    .instance(i)
                    .unwrap();
                self.env.bus.register_agent(&t, &reg).await.unwrap();
            }
        });
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
            failure_persistence: persisted(),
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
        1000,
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

/// Method, path, and the body's fields as (name, JSON text).
type ValidBody = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Valid bodies, each a list of (field, JSON text) so one field at a time can
/// be replaced by raw text (deep nesting is text, never a tree).
const VALID: &[ValidBody] = &[
    (
        "POST",
        "/api/v1/jobs",
        &[
            ("orchestrator_agent", r#""orc""#),
            ("worker_agent", r#""w""#),
            ("task", r#""t""#),
            ("items", "[1, 2]"),
            ("parallelism", "2"),
            ("timeout_per_item", "5"),
            ("max_retries", "1"),
        ],
    ),
    (
        "POST",
        "/api/v1/agents/register",
        &[("agent_id", r#""a""#), ("instance_id", r#""i1""#)],
    ),
    (
        "POST",
        "/api/v1/agents/fuzz-agent/messages",
        &[
            ("from_instance_id", r#""peer""#),
            ("message_type", r#""note""#),
            ("payload", r#"{"x": 1}"#),
        ],
    ),
    (
        "POST",
        "/api/v1/invocations",
        &[
            ("caller_instance_id", r#""peer""#),
            ("target_instance_id", r#""ghost""#),
            ("request_payload", r#"{"q": 1}"#),
            ("timeout_seconds", "1"),
        ],
    ),
    (
        "POST",
        "/api/v1/invocations/respond",
        &[
            ("invoke_id", r#""inv_0000000000000000""#),
            ("response_payload", "{}"),
            ("error", r#""e""#),
        ],
    ),
    (
        "PUT",
        "/api/v1/blackboard/k",
        &[("value", "1"), ("ttl", "5")],
    ),
    ("POST", "/api/v1/blackboard/k/increment", &[("amount", "1")]),
    (
        "PUT",
        "/api/v1/namespaces/ns/entries/k",
        &[("value", r#"{"a": 1}"#)],
    ),
    (
        "POST",
        "/api/v1/namespaces/ns/entries/k/cas",
        &[("expected", "null"), ("value", "1")],
    ),
    (
        "POST",
        "/api/v1/jobs/00000000-0000-0000-0000-000000000000/cancel",
        &[("reason", r#""r""#), ("cancelled_by", r#""me""#)],
    ),
    (
        "POST",
        "/api/v1/jobs/00000000-0000-0000-0000-000000000000/broadcast",
        &[("from_instance_id", r#""peer""#), ("payload", "{}")],
    ),
];

/// A hostile replacement for one field, as JSON text.
fn hostile_field() -> impl Strategy<Value = String> {
    prop_oneof![
        // Deep: past the parser's depth limit and just inside it.
        (1usize..400).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        (1usize..200).prop_map(|d| format!("{}{}", r#"{"a":"#.repeat(d), "}".repeat(d))),
        // Huge strings and arrays.
        (0usize..300_000).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
        (0usize..20_000).prop_map(|n| format!("[{}]", vec!["0"; n.max(1)].join(","))),
        // Control characters and NUL, escaped as JSON allows, in strings and keys.
        (0u32..0x20).prop_map(|c| format!("\"a\\u{c:04x}b\"")),
        (0u32..0x20).prop_map(|c| format!("{{\"k\\u{c:04x}\": \"v\\u{c:04x}\"}}")),
        // Numbers past every bound, and the wrong types.
        count().prop_map(|v| v.to_string()),
        prop::sample::select(vec![
            "null",
            "true",
            "\"\"",
            "{}",
            "[]",
            "1e400",
            "-0",
            "\"NaN\"",
            "18446744073709551616",
            "-9223372036854775809",
            "0.000001",
        ])
        .prop_map(str::to_string),
    ]
}

#[test]
fn valid_bodies_with_one_hostile_field_never_get_a_5xx() {
    // Little credit, so the 402 paths run too (a job of two items costs 9.00).
    let f = Fixture::with_credit(5);
    f.register(&["fuzz-agent", "peer"]);
    f.run(
        400,
        (0..VALID.len(), 0usize..8, hostile_field(), any::<bool>()),
        |f, (endpoint, field, text, drop)| {
            let (method, uri, fields) = VALID[endpoint];
            let field = field % fields.len();
            let body: Vec<String> = fields
                .iter()
                .enumerate()
                .filter(|(i, _)| !(drop && *i == field))
                .map(|(i, (k, v))| {
                    format!("\"{k}\": {}", if i == field { text.as_str() } else { v })
                })
                .collect();
            let body = format!("{{{}}}", body.join(", "));
            let status = f.send(method, uri, body.into_bytes())?;
            prop_assert!(
                status < 500,
                "{method} {uri}, {}: {status}",
                fields[field].0
            );
            Ok(())
        },
    );
    // The valid bodies themselves reach their handlers (and some succeed).
    let seen = f.seen.lock().unwrap();
    assert!(
        seen.contains_key(&402) || seen.contains_key(&201),
        "{seen:?}"
    );
}
