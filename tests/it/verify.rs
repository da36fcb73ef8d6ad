//! `verify` against one tamper of each kind: each is reported for the
//! tenant (and job) it touched, and never for a bystander whose money is
//! the same shape. Every other check in the suite (the fault suite,
//! `pg-restart-check.sh`, `reshard-check.sh`) leans on this one.

use crate::common;
use std::time::Duration;

use agentbus::TenantId;
use agentbus::jobs::JobSpec;
use agentbus::outbox::verify::{VerifyReport, verify};
use common::{TestEnv, drain};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

/// Two tenants with the same activity: a grant, a completed job, a job
/// cancelled half way, a failed item, a metered blackboard write. Mirrored,
/// and clean.
struct Scene {
    env: TestEnv,
    victim: TenantId,
    bystander: TenantId,
    /// The victim's completed and cancelled jobs.
    done: Uuid,
    cancelled: Uuid,
    /// The bystander's jobs.
    others: Vec<Uuid>,
}

async fn activity(env: &TestEnv, t: &TenantId) -> (Uuid, Uuid) {
    env.grant(t, 100).await;
    let spec = JobSpec::new("orc", "w", "task", vec![json!(1), json!(2), json!(3)]);
    let done = env.bus.spawn_job(t, &spec).await.unwrap().id;
    let items = env
        .bus
        .claim_items(t, &done, "w1", 3, Duration::ZERO)
        .await
        .unwrap();
    env.bus
        .complete_items(
            t,
            &done,
            &[
                (items[0].item_id.clone(), json!(1)),
                (items[1].item_id.clone(), json!(2)),
            ],
        )
        .await
        .unwrap();
    env.bus
        .fail_item(t, &done, &items[2].item_id, "no", false)
        .await
        .unwrap();
    let cancelled = env.bus.spawn_job(t, &spec).await.unwrap().id;
    let items = env
        .bus
        .claim_items(t, &cancelled, "w1", 1, Duration::ZERO)
        .await
        .unwrap();
    env.bus
        .complete_items(t, &cancelled, &[(items[0].item_id.clone(), json!(1))])
        .await
        .unwrap();
    env.bus
        .cancel_job(t, &cancelled, "ops", "enough")
        .await
        .unwrap();
    let ns = agentbus::keys::Ident::new("namespace", "n").unwrap();
    env.bus
        .blackboard(t, &ns)
        .set("k", &json!(1), None, None)
        .await
        .unwrap();
    env.bus.flush_metering(t).await.unwrap();
    (done, cancelled)
}

async fn scene() -> Scene {
    let env = TestEnv::with_db().await;
    let victim = env.tenant("victim");
    let bystander = env.tenant("bystander");
    let (done, cancelled) = activity(&env, &victim).await;
    let (a, b) = activity(&env, &bystander).await;
    drain(&env, &victim).await;
    drain(&env, &bystander).await;
    let scene = Scene {
        env,
        victim,
        bystander,
        done,
        cancelled,
        others: vec![a, b],
    };
    let report = scene.verify().await;
    assert!(
        report.ok,
        "the scene itself is clean: {}",
        report.to_table()
    );
    // Every job of both tenants is checked.
    for job in [scene.done, scene.cancelled, a, b] {
        assert!(
            report.jobs.iter().any(|j| j.job_id == job),
            "{job} unchecked"
        );
    }
    scene
}

impl Scene {
    async fn verify(&self) -> VerifyReport {
        verify(&self.env.bus, self.env.pool(), Duration::from_millis(300))
            .await
            .unwrap()
    }

    async fn sql(&self, statement: &str) {
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(self.env.pool())
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1, "{statement}");
    }

    /// The report blames the victim (and `job`, when given) and nobody else.
    fn assert_blames(&self, report: &VerifyReport, tenant_flagged: bool, job: Option<Uuid>) {
        let table = report.to_table();
        assert!(!report.ok, "tamper not seen:\n{table}");
        for t in &report.tenants {
            let expect_ok = !(tenant_flagged && t.tenant == self.victim.as_str());
            assert_eq!(t.ok, expect_ok, "tenant {}:\n{table}", t.tenant);
        }
        for j in &report.jobs {
            assert_eq!(j.ok, Some(j.job_id) != job, "job {}:\n{table}", j.job_id);
            if Some(j.job_id) == job {
                assert_eq!(j.tenant, self.victim.as_str());
                assert!(!j.problem.is_empty());
            }
        }
        assert!(
            self.others
                .iter()
                .all(|o| report.jobs.iter().any(|j| j.job_id == *o && j.ok)),
            "bystander jobs:\n{table}"
        );
        assert!(
            report
                .tenants
                .iter()
                .any(|t| t.tenant == self.bystander.as_str() && t.ok)
        );
    }
}

#[tokio::test]
async fn a_deleted_ledger_row_blames_its_tenant_and_its_job() {
    let s = scene().await;
    s.sql(&format!(
        "DELETE FROM agents.credit_ledger WHERE id = (SELECT MIN(id) FROM agents.credit_ledger
          WHERE tenant_id = 'victim' AND job_id = '{}' AND operation = 'spend' AND skill = 'job_item')",
        s.done
    ))
    .await;
    let report = s.verify().await;
    s.assert_blames(&report, true, Some(s.done));
    let t = report
        .tenants
        .iter()
        .find(|t| t.tenant == "victim")
        .unwrap();
    // The ledger lost the spend of the two items completed together (4.00):
    // it disagrees with Redis and with the balance row.
    assert_eq!(t.redis.spent - t.ledger.spent, Decimal::from(4));
    assert_eq!(t.redis, t.postgres);
}

#[tokio::test]
async fn a_changed_ledger_amount_blames_its_tenant_and_its_job() {
    let s = scene().await;
    s.sql(&format!(
        "UPDATE agents.credit_ledger SET amount = amount + 0.01 WHERE id = (SELECT MIN(id)
           FROM agents.credit_ledger WHERE tenant_id = 'victim' AND job_id = '{}' AND operation = 'refund')",
        s.cancelled
    ))
    .await;
    let report = s.verify().await;
    s.assert_blames(&report, true, Some(s.cancelled));
}

#[tokio::test]
async fn a_changed_job_row_blames_the_job_only() {
    let s = scene().await;
    s.sql(&format!(
        "UPDATE agents.jobs SET credits_spent = credits_spent + 1 WHERE id = '{}'",
        s.done
    ))
    .await;
    let report = s.verify().await;
    // Balances still agree; only the job's own figures differ.
    s.assert_blames(&report, false, Some(s.done));
    let j = report.jobs.iter().find(|j| j.job_id == s.done).unwrap();
    assert!(j.problem.contains("jobs table"), "{}", j.problem);
}

#[tokio::test]
async fn a_job_status_changed_in_postgres_blames_the_job() {
    let s = scene().await;
    s.sql(&format!(
        "UPDATE agents.jobs SET status = 'completed' WHERE id = '{}'",
        s.cancelled
    ))
    .await;
    let report = s.verify().await;
    s.assert_blames(&report, false, Some(s.cancelled));
}

#[tokio::test]
async fn a_changed_redis_balance_blames_its_tenant() {
    let s = scene().await;
    let mut conn = s.env.conn().await;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(s.env.bus.keys(&s.victim).credits())
        .arg("spent")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let report = s.verify().await;
    s.assert_blames(&report, true, None);
    let t = report
        .tenants
        .iter()
        .find(|t| t.tenant == "victim")
        .unwrap();
    assert_eq!(t.postgres, t.ledger);
    assert_ne!(t.redis, t.postgres);
}

#[tokio::test]
async fn a_changed_postgres_balance_blames_its_tenant() {
    let s = scene().await;
    s.sql("UPDATE agents.credit_balances SET total_credits = total_credits - 1 WHERE tenant_id = 'victim'")
        .await;
    let report = s.verify().await;
    s.assert_blames(&report, true, None);
}

#[tokio::test]
async fn an_unsent_event_blames_its_tenant() {
    let s = scene().await;
    // Money moved in Redis whose event no sink has written yet.
    s.env.grant(&s.victim, 1).await;
    let report = s.verify().await;
    s.assert_blames(&report, true, None);
    let t = report
        .tenants
        .iter()
        .find(|t| t.tenant == "victim")
        .unwrap();
    assert_eq!(t.unmirrored_events, 1);
    assert!(
        report
            .to_table()
            .contains("victim: 1 outbox event(s) not mirrored yet")
    );
    // Once mirrored, clean again.
    drain(&s.env, &s.victim).await;
    assert!(s.verify().await.ok);
}

#[tokio::test]
async fn a_stranded_event_blames_its_tenant() {
    let s = scene().await;
    sqlx::query("ALTER TABLE agents.credit_ledger ADD CONSTRAINT small CHECK (amount < 1000)")
        .execute(s.env.pool())
        .await
        .unwrap();
    s.env.grant(&s.victim, 5000).await;
    drain(&s.env, &s.victim).await;
    let report = s.verify().await;
    s.assert_blames(&report, true, None);
    let t = report
        .tenants
        .iter()
        .find(|t| t.tenant == "victim")
        .unwrap();
    assert_eq!((t.stranded_events, t.unmirrored_events), (1, 0));
}

#[tokio::test]
async fn a_job_past_retention_is_checked_against_postgres_alone() {
    let s = scene().await;
    // Retention passes for both tenants' jobs: Redis forgets them.
    let mut conn = s.env.conn().await;
    for (t, jobs) in [
        (&s.victim, vec![s.done, s.cancelled]),
        (&s.bystander, s.others.clone()),
    ] {
        for job in jobs {
            let keys = s.env.bus.keys(t);
            let _: i64 = redis::cmd("DEL")
                .arg(keys.job(&job))
                .arg(keys.job_done(&job))
                .arg(keys.job_results(&job))
                .query_async(&mut conn)
                .await
                .unwrap();
            let _: i64 = redis::cmd("ZREM")
                .arg(keys.jobs())
                .arg(job.to_string())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let report = s.verify().await;
    assert!(report.ok, "{}", report.to_table());
    assert!(report.jobs.iter().all(|j| j.source == "postgres"));
    // Then the mirror's row of one of them is tampered with.
    s.sql(&format!(
        "UPDATE agents.jobs SET credits_refunded = credits_refunded - 2 WHERE id = '{}'",
        s.cancelled
    ))
    .await;
    let report = s.verify().await;
    s.assert_blames(&report, false, Some(s.cancelled));
}
