//! Property test: random interleavings of claim, complete, duplicate
//! completion, fail, timeout + reclaim and cancel keep DESIGN.md's invariants
//! after every step.

use crate::common;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use agentbus::Error;
use agentbus::jobs::{CompleteOutcome, FailOutcome, JobSpec, JobStatus};
use common::{TestEnv, assert_balance_matches_ledger, assert_job_credits};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::json;

#[derive(Clone, Debug)]
enum Op {
    Claim {
        worker: u8,
        count: u8,
    },
    Complete {
        pick: u8,
    },
    CompleteAgain {
        pick: u8,
    },
    Fail {
        pick: u8,
        retry: bool,
    },
    /// A worker completes a delivery it already reported failed (retried
    /// or failed for good): refused, and charges nothing.
    CompleteFailed {
        pick: u8,
    },
    /// Every held item times out (the job's timeout is set to zero) and the reclaimer runs.
    TimeoutAndReclaim,
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 1u8..4).prop_map(|(worker, count)| Op::Claim { worker, count }),
        4 => any::<u8>().prop_map(|pick| Op::Complete { pick }),
        1 => any::<u8>().prop_map(|pick| Op::CompleteAgain { pick }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(pick, retry)| Op::Fail { pick, retry }),
        1 => any::<u8>().prop_map(|pick| Op::CompleteFailed { pick }),
        1 => Just(Op::TimeoutAndReclaim),
        1 => Just(Op::Cancel),
    ]
}

/// What the test knows: which deliveries each worker holds, and which items
/// were completed (each must be charged exactly once).
#[derive(Default)]
struct Model {
    held: Vec<(u8, String, i64)>,
    completed_ids: Vec<String>,
    completed_items: HashSet<i64>,
    failed_items: HashSet<i64>,
    /// Deliveries reported failed, whether retried or failed for good.
    failed_deliveries: Vec<String>,
    cancelled: bool,
}

async fn run_case(ops: Vec<Op>, items: usize, max_retries: i64) {
    let env = TestEnv::new().await;
    let tenant = env.tenant("prop");
    env.grant(&tenant, 1000).await;
    let mut spec = JobSpec::new(
        "orc",
        "worker",
        "prop",
        (0..items).map(|i| json!(i)).collect(),
    );
    spec.max_retries = max_retries;
    let job = env.bus.spawn_job(&tenant, &spec).await.expect("spawn");
    let id = job.id;
    let mut model = Model::default();

    for op in ops {
        match op {
            Op::Claim { worker, count } => {
                let result = env
                    .bus
                    .claim_items(
                        &tenant,
                        &id,
                        &format!("w{worker}"),
                        count as usize,
                        Duration::ZERO,
                    )
                    .await;
                match result {
                    Ok(claimed) => {
                        assert!(!model.cancelled, "delivered after cancel");
                        for c in claimed {
                            // No item is held by two workers at once, and a
                            // finished item is never delivered again.
                            assert!(
                                !model.held.iter().any(|(_, _, idx)| *idx == c.item_index),
                                "item {} delivered twice at once",
                                c.item_index
                            );
                            assert!(!model.completed_items.contains(&c.item_index));
                            assert!(!model.failed_items.contains(&c.item_index));
                            model.held.push((worker, c.item_id, c.item_index));
                        }
                    }
                    Err(Error::Conflict { .. }) => {
                        let status = env.bus.job(&tenant, &id).await.unwrap().status;
                        assert!(status.is_finished());
                    }
                    Err(e) => panic!("claim: {e}"),
                }
            }
            Op::Complete { pick } if !model.held.is_empty() => {
                let (_, item_id, idx) = model.held.remove(pick as usize % model.held.len());
                match env
                    .bus
                    .complete_items(&tenant, &id, &[(item_id.clone(), json!(idx))])
                    .await
                {
                    Ok(outcomes) => {
                        assert_eq!(outcomes, vec![CompleteOutcome::Completed]);
                        assert!(
                            model.completed_items.insert(idx),
                            "item {idx} completed twice"
                        );
                        model.completed_ids.push(item_id);
                    }
                    Err(Error::Conflict { .. }) => assert!(model.cancelled),
                    Err(e) => panic!("complete: {e}"),
                }
            }
            Op::CompleteAgain { pick } if !model.completed_ids.is_empty() => {
                let item_id =
                    model.completed_ids[pick as usize % model.completed_ids.len()].clone();
                let before = env.bus.balance(&tenant).await.unwrap();
                match env
                    .bus
                    .complete_items(&tenant, &id, &[(item_id, json!(0))])
                    .await
                {
                    Ok(outcomes) => assert_eq!(outcomes, vec![CompleteOutcome::Duplicate]),
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("complete again: {e}"),
                }
                assert_eq!(env.bus.balance(&tenant).await.unwrap(), before);
            }
            Op::Fail { pick, retry } if !model.held.is_empty() => {
                let (_, item_id, idx) = model.held.remove(pick as usize % model.held.len());
                model.failed_deliveries.push(item_id.clone());
                match env.bus.fail_item(&tenant, &id, &item_id, "x", retry).await {
                    Ok(FailOutcome::Retried { .. }) => assert!(retry),
                    Ok(FailOutcome::Failed) => {
                        assert!(model.failed_items.insert(idx));
                    }
                    Ok(other) => panic!("fail: {other:?}"),
                    Err(Error::Conflict { .. }) => assert!(model.cancelled),
                    Err(e) => panic!("fail: {e}"),
                }
            }
            Op::CompleteFailed { pick } if !model.failed_deliveries.is_empty() => {
                let item_id =
                    model.failed_deliveries[pick as usize % model.failed_deliveries.len()].clone();
                let before = env.bus.balance(&tenant).await.unwrap();
                match env
                    .bus
                    .complete_items(&tenant, &id, &[(item_id, json!(0))])
                    .await
                {
                    Ok(o) => assert!(
                        matches!(o[0], CompleteOutcome::Stale | CompleteOutcome::Duplicate),
                        "{o:?}"
                    ),
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("complete a failed delivery: {e}"),
                }
                assert_eq!(env.bus.balance(&tenant).await.unwrap(), before);
            }
            Op::TimeoutAndReclaim => {
                let mut conn = env.conn().await;
                let _: () = redis::cmd("HSET")
                    .arg(env.bus.keys(&tenant).job(&id))
                    .arg("timeout_ms")
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let finished_before = env
                    .bus
                    .job(&tenant, &id)
                    .await
                    .unwrap()
                    .status
                    .is_finished();
                let (requeued, failed) = env.bus.reclaim_job(&tenant, &id).await.unwrap();
                if finished_before {
                    assert_eq!((requeued, failed), (0, 0));
                } else {
                    assert_eq!((requeued + failed) as usize, model.held.len());
                }
                // The job's counter says how many the reclaimer failed for good.
                let job_now = env.bus.job(&tenant, &id).await.unwrap();
                assert_eq!(
                    job_now.progress.failed as usize - model.failed_items.len(),
                    failed as usize
                );
                // Stale deliveries: every held id is now void.
                let stale: Vec<_> = model.held.drain(..).collect();
                for (_, item_id, _) in stale {
                    let r = env
                        .bus
                        .complete_items(&tenant, &id, &[(item_id, json!(0))])
                        .await;
                    match r {
                        Ok(o) => assert!(
                            matches!(o[0], CompleteOutcome::Stale | CompleteOutcome::Duplicate),
                            "{o:?}"
                        ),
                        Err(Error::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                sync_failed_items(&env, &tenant, &id, &mut model).await;
                let _: () = redis::cmd("HSET")
                    .arg(env.bus.keys(&tenant).job(&id))
                    .arg("timeout_ms")
                    .arg(60_000)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(());
            }
            Op::Cancel => match env.bus.cancel_job(&tenant, &id, "prop", "").await {
                Ok(outcome) => {
                    assert!(!model.cancelled);
                    let remaining = items - model.completed_items.len() - model.failed_items.len();
                    assert_eq!(outcome.cancelled_items as usize, remaining);
                    assert_eq!(
                        outcome.credits_refunded,
                        Decimal::from(2 * remaining as i64)
                    );
                    model.cancelled = true;
                }
                Err(Error::Conflict { .. }) => {
                    assert!(
                        env.bus
                            .job(&tenant, &id)
                            .await
                            .unwrap()
                            .status
                            .is_finished()
                    );
                }
                Err(e) => panic!("cancel: {e}"),
            },
            _ => {}
        }

        // The invariants, after every step.
        let job = env.bus.job(&tenant, &id).await.unwrap();
        assert_job_credits(&job);
        assert_eq!(job.progress.completed as usize, model.completed_items.len());
        assert_eq!(job.progress.failed as usize, model.failed_items.len());
        let balance = env.bus.balance(&tenant).await.unwrap();
        assert_eq!(balance.reserved, job.credits.still_reserved);
        assert_balance_matches_ledger(&env, &tenant).await;
        if model.completed_items.len() + model.failed_items.len() == items && !model.cancelled {
            let expected = if model.failed_items.is_empty() {
                JobStatus::Completed
            } else {
                JobStatus::Failed
            };
            assert_eq!(job.status, expected);
        }
    }
}

/// Learns from the dead-letter stream which items the reclaimer failed.
async fn sync_failed_items(
    env: &TestEnv,
    tenant: &agentbus::TenantId,
    id: &uuid::Uuid,
    model: &mut Model,
) {
    let mut conn = env.conn().await;
    let dlq: redis::Value = redis::cmd("XRANGE")
        .arg(env.bus.keys(tenant).dlq())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(entries) = dlq else {
        return;
    };
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for e in &entries {
        let e = agentbus::codec::StreamEntry::from_value(e).unwrap();
        if e.text("job") == Some(id.to_string().as_str()) {
            *counts.entry(e.int("idx").unwrap()).or_default() += 1;
        }
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "an item dead-lettered twice"
    );
    model.failed_items = counts.into_keys().collect();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_the_invariants(
        ops in prop::collection::vec(op(), 1..40),
        items in 1usize..10,
        max_retries in 0i64..3,
    ) {
        common::block_on(run_case(ops, items, max_retries));
    }
}
