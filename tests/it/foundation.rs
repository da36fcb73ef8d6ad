//! The foundation: migrations, the Lua loader, readiness, configuration errors.

use crate::common;
use std::process::Command;
use std::time::Duration;

use agentbus::api::{ApiConfig, AppState};
use agentbus::bus::{AgentBus, Limits};
use agentbus::conn::{Redis, RedisOptions};
use agentbus::keys::Keyspace;
use agentbus::prices::Prices;
use axum::http::StatusCode;
use common::{PrivateRedis, TestEnv, call, create_database, eventually};
use sqlx::PgPool;

/// Columns and indexes of the `agents` schema, as text, for comparison.
async fn schema_snapshot(pool: &PgPool) -> Vec<String> {
    let columns: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text,
                COALESCE(numeric_precision::text || ',' || numeric_scale::text, NULL)
           FROM information_schema.columns WHERE table_schema = 'agents'
          ORDER BY table_name, ordinal_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'agents' ORDER BY indexname",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    columns
        .into_iter()
        .map(|c| format!("{c:?}"))
        .chain(indexes.into_iter().map(|i| format!("{i:?}")))
        .collect()
}

#[tokio::test]
async fn migrations_go_up_down_and_up_again_to_the_same_schema() {
    let db = create_database().await;
    let first = schema_snapshot(&db.pool).await;
    assert!(first.len() > 40, "schema looks empty: {first:?}");

    // `up` again is a no-op.
    agentbus::db::migrate_up(&db.pool).await.unwrap();
    assert_eq!(schema_snapshot(&db.pool).await, first);

    agentbus::db::migrate_down(&db.pool, true).await.unwrap();
    assert!(schema_snapshot(&db.pool).await.is_empty());
    let status = agentbus::db::migrate_status(&db.pool).await.unwrap();
    assert!(status.iter().all(|m| !m.applied));

    agentbus::db::migrate_up(&db.pool).await.unwrap();
    assert_eq!(schema_snapshot(&db.pool).await, first);
    let status = agentbus::db::migrate_status(&db.pool).await.unwrap();
    assert!(!status.is_empty() && status.iter().all(|m| m.applied));

    db.pool.close().await;
    let admin = PgPool::connect(&common::admin_database_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {} WITH (FORCE)",
        db.name
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn invoke_audit_matches_the_seed_sql() {
    let env = TestEnv::with_db().await;
    let columns: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text, is_nullable::text,
                COALESCE(numeric_precision::text || ',' || numeric_scale::text, NULL)
           FROM information_schema.columns
          WHERE table_schema = 'agents' AND table_name = 'invoke_audit'
          ORDER BY ordinal_position",
    )
    .fetch_all(env.pool())
    .await
    .unwrap();
    let expected = [
        ("id", "uuid", "NO", None),
        ("invoke_id", "text", "NO", None),
        ("caller_instance_id", "text", "NO", None),
        ("target_instance_id", "text", "NO", None),
        ("job_id", "uuid", "YES", None),
        ("request_payload", "jsonb", "NO", None),
        ("response_payload", "jsonb", "YES", None),
        ("status", "text", "NO", None),
        ("credits_charged", "numeric", "YES", Some("12,2")),
        ("started_at", "timestamp with time zone", "NO", None),
        ("completed_at", "timestamp with time zone", "YES", None),
        ("duration_ms", "integer", "YES", Some("32,0")),
        ("error_message", "text", "YES", None),
    ];
    let got: Vec<_> = columns
        .iter()
        .map(|(n, t, null, p)| (n.as_str(), t.as_str(), null.as_str(), p.as_deref()))
        .collect();
    assert_eq!(got, expected);

    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes
          WHERE schemaname = 'agents' AND tablename = 'invoke_audit' ORDER BY indexname",
    )
    .fetch_all(env.pool())
    .await
    .unwrap();
    for name in [
        "idx_invoke_audit_invoke_id",
        "idx_invoke_audit_caller",
        "idx_invoke_audit_job",
        "invoke_audit_invoke_id_key",
        "invoke_audit_pkey",
    ] {
        assert!(
            indexes.iter().any(|i| i == name),
            "{name} missing in {indexes:?}"
        );
    }
}

#[tokio::test]
async fn lua_scripts_still_run_after_script_flush() {
    let env = TestEnv::new().await;
    let tenant = env.tenant("acme");
    env.grant(&tenant, 10).await;
    let mut conn = env.conn().await;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    env.grant(&tenant, 5).await;
    let balance = env.bus.balance(&tenant).await.unwrap();
    assert_eq!(balance.total, rust_decimal::Decimal::from(15));
}

/// A private redis-server on a free port, so the test can stop and restart it.
#[tokio::test]
async fn readyz_reports_redis_down_and_recovers_when_it_is_back() {
    let mut server = PrivateRedis::start(&[]);
    let redis = Redis::open(&server.url(), RedisOptions::default()).unwrap();
    let bus = AgentBus::new(
        redis,
        Keyspace::new("ab").unwrap(),
        Prices::default(),
        Limits::default(),
    );
    let app = agentbus::api::router(AppState::new(
        bus,
        agentbus::db::connect_lazy(&common::admin_database_url(), 2).unwrap(),
        ApiConfig::default(),
        None,
    ));

    let ready = || async { call(&app, "GET", "/readyz", None, None).await.0 == StatusCode::OK };
    assert!(
        eventually(Duration::from_secs(10), ready).await,
        "never ready"
    );

    server.kill();
    let (status, body) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(body["redis"], "ok", "{body}");
    assert_eq!(body["postgres"], "ok", "{body}");
    let (status, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);

    server.restart();
    assert!(
        eventually(Duration::from_secs(15), ready).await,
        "not ready again after Redis came back"
    );
}

fn agentbus_cmd(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agentbus"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run agentbus")
}

#[test]
fn bad_urls_exit_nonzero_with_one_line_naming_the_variable() {
    let out = agentbus_cmd(
        &[("REDIS_URL", "nonsense://x")],
        &["credits", "show", "--tenant", "a"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("REDIS_URL"), "{err}");

    let out = agentbus_cmd(
        &[("DATABASE_URL", "postgres://[::1")],
        &["migrate", "status"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");

    let out = agentbus_cmd(
        &[("AGENTBUS_PRICES", "job_item=abc")],
        &["credits", "show", "--tenant", "a"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AGENTBUS_PRICES"), "{err}");

    let out = agentbus_cmd(&[], &["credits", "show", "--tenant", "no{pe}"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tenant"), "{err}");
}

/// `bus.tenant(&t)` binds the tenant once: what one tenant's handle spawns,
/// credits and registers, another's handle cannot see or touch.
#[tokio::test]
async fn a_tenant_handle_reaches_its_own_tenant_only() {
    use agentbus::Error;
    use agentbus::agents::registry::Registration;
    use agentbus::jobs::JobSpec;
    use agentbus::keys::Ident;
    use serde_json::json;

    let env = TestEnv::new().await;
    let (a, b) = (env.tenant("handle-a"), env.tenant("handle-b"));
    let (ha, hb) = (env.bus.tenant(&a), env.bus.tenant(&b));
    assert_eq!(ha.id(), &a);
    ha.credits()
        .grant(rust_decimal::Decimal::from(100).into(), json!({}))
        .await
        .unwrap();
    let job = ha
        .jobs()
        .spawn(&JobSpec::new("o", "w", "t", vec![json!(1), json!(2)]))
        .await
        .unwrap();
    // The same job through the handle and through the explicit call.
    assert_eq!(
        ha.jobs().get(&job.id).await.unwrap().id,
        env.bus.job(&a, &job.id).await.unwrap().id
    );
    assert!(matches!(
        hb.jobs().get(&job.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        hb.jobs().cancel(&job.id, "b", "not mine").await,
        Err(Error::NotFound(_))
    ));
    assert!(
        hb.jobs()
            .claim(&job.id, "w1", 1, Duration::ZERO)
            .await
            .is_err()
    );
    assert_eq!(
        hb.credits().balance().await.unwrap().total,
        rust_decimal::Decimal::ZERO
    );
    let claimed = ha
        .jobs()
        .claim(&job.id, "w1", 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let inst = ha
        .agents()
        .register(&Registration::new("worker").unwrap())
        .await
        .unwrap();
    let id = Ident::new("instance_id", inst.instance_id.as_str()).unwrap();
    assert!(ha.agents().get(&id).await.is_ok());
    assert!(matches!(
        hb.agents().get(&id).await,
        Err(Error::NotFound(_))
    ));
    assert!(hb.agents().deregister(&id).await.is_err());
    assert!(
        ha.agents().get(&id).await.is_ok(),
        "b's deregister touched a"
    );
}
