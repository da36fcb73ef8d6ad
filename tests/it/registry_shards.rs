//! Token records and the tenants registry are sharded (no single key serves
//! every request), and what an older deployment kept in the unsharded keys
//! still works: its tokens authenticate, rotate in place, revoke and list;
//! its tenants are still found.

use agentbus::keys::{READY_SHARDS, ready_shard};
use sha2::{Digest, Sha256};

use crate::common::TestEnv;

#[tokio::test]
async fn tokens_and_tenants_spread_over_their_shards() {
    let env = TestEnv::new().await;
    let bus = &env.bus;
    let ks = bus.keyspace();
    let mut conn = env.conn().await;
    let mut shards = std::collections::BTreeSet::new();
    for i in 0..40 {
        let t = env.tenant(&format!("s{i}"));
        let token = bus.create_token(&t).await.unwrap();
        let stored: Option<String> = redis::cmd("HGET")
            .arg(ks.tokens_of(&token.id))
            .arg(&token.id)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(stored.is_some(), "token {} not in its shard", token.id);
        let member: bool = redis::cmd("SISMEMBER")
            .arg(ks.tenants_of(t.as_str()))
            .arg(t.as_str())
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(member);
        shards.insert(ready_shard(&token.id));
        // A rotation's new id lands in the old one's shard (one MULTI).
        let rotated = bus.rotate_token(&token.id).await.unwrap();
        assert_eq!(ready_shard(&rotated.id), ready_shard(&token.id));
        assert_eq!(bus.authenticate(&rotated.token).await.unwrap(), t);
        assert!(bus.authenticate(&token.token).await.is_err());
    }
    assert!(shards.len() > READY_SHARDS / 2, "{shards:?}");
    for legacy in [ks.tokens_legacy(), ks.tenants_legacy()] {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(legacy)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0, "nothing is added to an unsharded key");
    }
    assert_eq!(bus.tenants().await.unwrap().len(), 40);
}

#[tokio::test]
async fn what_an_older_deployment_kept_unsharded_still_works() {
    let env = TestEnv::new().await;
    let bus = &env.bus;
    let ks = bus.keyspace();
    let mut conn = env.conn().await;
    let t = env.tenant("old");
    // As the version before the shards wrote them.
    let (id, secret) = ("0123456789ab", "cd".repeat(32));
    let record = serde_json::json!({
        "id": id,
        "tenant": t.as_str(),
        "hash": hex::encode(Sha256::digest(secret.as_bytes())),
        "created_at": "2026-01-01T00:00:00Z",
    });
    let _: () = redis::cmd("HSET")
        .arg(ks.tokens_legacy())
        .arg(id)
        .arg(record.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(ks.tenants_legacy())
        .arg(t.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    let token = format!("abt_{id}_{secret}");

    assert_eq!(bus.authenticate(&token).await.unwrap(), t);
    assert_eq!(bus.tenants().await.unwrap(), vec![t.clone()]);
    let listed = bus.list_tokens(Some(&t)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    // Rotated in place: the new record in the same hash, the old one gone.
    let rotated = bus.rotate_token(id).await.unwrap();
    assert!(bus.authenticate(&token).await.is_err());
    assert_eq!(bus.authenticate(&rotated.token).await.unwrap(), t);
    let in_legacy: bool = redis::cmd("HEXISTS")
        .arg(ks.tokens_legacy())
        .arg(&rotated.id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(in_legacy);
    bus.revoke_token(&rotated.id).await.unwrap();
    assert!(bus.authenticate(&rotated.token).await.is_err());
    assert!(bus.list_tokens(Some(&t)).await.unwrap().is_empty());
}
