//! API tokens: each belongs to one tenant; only a hash of its secret is kept.
//!
//! A token reads `abt_<id>_<secret>`. The id names the record in the hash
//! `ab:tokens` (so a token can be listed and revoked without its secret); the
//! secret is checked against its SHA-256 in constant time. Records are
//! cached per process ([`cache`]); a revocation reaches every process's
//! cache over pub/sub.

pub mod cache;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::bus::AgentBus;
use crate::error::{Error, Result};
use crate::keys::TenantId;

const TOKEN_PREFIX: &str = "abt_";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: TenantId,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A freshly created token: the only moment its secret is known.
#[derive(Clone, Debug, Serialize)]
pub struct NewToken {
    pub id: String,
    pub tenant: TenantId,
    pub token: String,
}

/// A new token's record (to store) and its text (to hand out once).
fn fresh_token(tenant: &TenantId) -> (TokenRecord, String) {
    fresh_token_in(tenant, None)
}

/// A fresh token whose id falls in `shard` (of the token records), when
/// given: a rotation swaps two records of one hash in one MULTI. One id in
/// READY_SHARDS lands there, so a few dozen draws at most in practice.
fn fresh_token_in(tenant: &TenantId, shard: Option<usize>) -> (TokenRecord, String) {
    let mut rng = rand::rng();
    let mut id = hex::encode(rng.random::<[u8; 6]>());
    while let Some(shard) = shard
        && crate::keys::ready_shard(&id) != shard
    {
        id = hex::encode(rng.random::<[u8; 6]>());
    }
    let secret = hex::encode(rng.random::<[u8; 32]>());
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    let record = TokenRecord {
        id,
        tenant: tenant.clone(),
        hash: sha256_hex(&secret),
        created_at: chrono::Utc::now(),
    };
    (record, token)
}

/// What may be shown of a token: never its secret or hash.
#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: TenantId,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<TokenRecord> for TokenInfo {
    fn from(r: TokenRecord) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant,
            created_at: r.created_at,
        }
    }
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two strings.
pub fn secure_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|c| c.is_ascii_hexdigit());
    (hex_ok(id, 12) && hex_ok(secret, 64)).then_some((id, secret))
}

impl AgentBus {
    /// Creates a token for `tenant`; the returned secret is not stored.
    pub async fn create_token(&self, tenant: &TenantId) -> Result<NewToken> {
        let (record, token) = fresh_token(tenant);
        let id = record.id.clone();
        let json = serde_json::to_string(&record).map_err(|e| Error::Codec(e.to_string()))?;
        let mut conn = self.redis().conn().await?;
        let created: bool = redis::cmd("HSETNX")
            .arg(self.keyspace().tokens_of(&id))
            .arg(&id)
            .arg(json)
            .query_async(&mut conn)
            .await?;
        if !created {
            return Err(Error::conflict("token id collision; try again"));
        }
        drop(conn);
        self.register_tenant(tenant).await?;
        Ok(NewToken {
            token,
            id,
            tenant: tenant.clone(),
        })
    }

    /// The tenant a token belongs to; `Unauthorized` for anything else.
    pub async fn authenticate(&self, token: &str) -> Result<TenantId> {
        self.authenticate_with_id(token)
            .await
            .map(|(tenant, _)| tenant)
    }

    /// The tenant a token belongs to, and the token's id (for its limits).
    pub async fn authenticate_with_id(&self, token: &str) -> Result<(TenantId, String)> {
        let (id, secret) = parse(token).ok_or(Error::Unauthorized("malformed token"))?;
        let record = self
            .token_record(id)
            .await?
            .ok_or(Error::Unauthorized("unknown token"))?;
        if secure_eq(&record.hash, &sha256_hex(secret)) {
            Ok((record.tenant, record.id))
        } else {
            Err(Error::Unauthorized("unknown token"))
        }
    }

    /// The record of token `id`, if there is one (an unreadable one counts
    /// as none): from this process's cache when it may be trusted.
    async fn token_record(&self, id: &str) -> Result<Option<TokenRecord>> {
        let cache = self.token_cache();
        if let Some(record) = cache.get(id) {
            return Ok(Some(record));
        }
        let epoch = cache.epoch();
        let record = self.stored_token_record(id).await?;
        if let Some(r) = &record {
            cache.put(r, epoch);
        }
        Ok(record)
    }

    async fn stored_token_record(&self, id: &str) -> Result<Option<TokenRecord>> {
        Ok(self.find_token(id).await?.map(|(record, _)| record))
    }

    /// Token `id`'s record and the hash holding it: its shard, or the
    /// unsharded hash of an older deployment.
    async fn find_token(&self, id: &str) -> Result<Option<(TokenRecord, String)>> {
        let mut conn = self.redis().conn().await?;
        for key in [
            self.keyspace().tokens_of(id),
            self.keyspace().tokens_legacy(),
        ] {
            let json: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg(id)
                .query_async(&mut conn)
                .await?;
            if let Some(record) = json.and_then(|j| serde_json::from_str(&j).ok()) {
                return Ok(Some((record, key)));
            }
        }
        Ok(None)
    }

    /// Tells every process's cache that token `id` is no longer valid (this
    /// process's at once). A lost publish is bounded by the caches' time to
    /// live, so it is logged and counted, not returned.
    async fn announce_revoked(&self, id: &str) {
        self.token_cache().forget(id);
        let published: Result<()> = async {
            let mut conn = self.redis().conn().await?;
            let _: i64 = redis::cmd("PUBLISH")
                .arg(self.keyspace().tokens_revoked())
                .arg(id)
                .query_async(&mut conn)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = published {
            e.count_failure();
            tracing::warn!(error = %e, token = id, "revocation not published; other processes drop the token within their cache time");
        }
    }

    /// Every token record (secrets are never stored), optionally of one tenant.
    pub async fn list_tokens(&self, tenant: Option<&TenantId>) -> Result<Vec<TokenRecord>> {
        let ks = self.keyspace();
        let mut conn = self.redis().conn().await?;
        let mut all: Vec<String> = Vec::new();
        // One command per key: the shards live in different cluster slots.
        for key in (0..crate::keys::READY_SHARDS)
            .map(|s| ks.tokens(s))
            .chain([ks.tokens_legacy()])
        {
            let shard: Vec<String> = redis::cmd("HVALS").arg(key).query_async(&mut conn).await?;
            all.extend(shard);
        }
        let mut records: Vec<TokenRecord> = all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .filter(|r: &TokenRecord| tenant.is_none_or(|t| &r.tenant == t))
            .collect();
        records.sort_by_key(|r| r.created_at);
        Ok(records)
    }

    /// Replaces a token by a new one of the same tenant, atomically: the old
    /// secret stops working at the moment the new one starts.
    pub async fn rotate_token(&self, id: &str) -> Result<NewToken> {
        let (old, key) = self
            .find_token(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("token {id}")))?;
        let mut conn = self.redis().conn().await?;
        // The new record goes where the old one is: in its shard (the new id
        // drawn there), or in the unsharded hash it came from.
        let shard = (key != self.keyspace().tokens_legacy()).then(|| crate::keys::ready_shard(id));
        let (record, token) = fresh_token_in(&old.tenant, shard);
        let record_json =
            serde_json::to_string(&record).map_err(|e| Error::Codec(e.to_string()))?;
        // One key, one MULTI: never both valid, never neither.
        let (_, removed): ((), i64) = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&key)
            .arg(&record.id)
            .arg(record_json)
            .cmd("HDEL")
            .arg(&key)
            .arg(id)
            .query_async(&mut conn)
            .await?;
        if removed == 0 {
            // Revoked meanwhile: take the new one back too.
            let _: i64 = redis::cmd("HDEL")
                .arg(&key)
                .arg(&record.id)
                .query_async(&mut conn)
                .await?;
            return Err(Error::not_found(format!("token {id}")));
        }
        drop(conn);
        self.announce_revoked(id).await;
        Ok(NewToken {
            id: record.id,
            tenant: record.tenant,
            token,
        })
    }

    /// Counts one request of a token against `per_second` (with `burst`).
    /// `None` when allowed, else how long to wait.
    pub async fn rate_limit(
        &self,
        token_id: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Option<std::time::Duration>> {
        let mut conn = self.redis().conn().await?;
        let reply = crate::scripts::scripts()
            .rate_limit
            .key("limit", self.keyspace().rate_limit(token_id))
            .arg("rate", per_second)
            .arg("burst", burst.max(1))
            .invoke(&mut conn)
            .await?;
        let wait_ms = reply.int("wait_ms")?;
        Ok((reply.int("allowed")? == 0)
            .then(|| std::time::Duration::from_millis(wait_ms.max(1) as u64)))
    }

    /// Revokes a token by id: refused from this process's next request, and
    /// from other processes' once the revocation reaches them (pub/sub,
    /// milliseconds; at most their cache time, `AGENTBUS_TOKEN_CACHE_SECS`).
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let mut conn = self.redis().conn().await?;
        let mut removed: i64 = 0;
        for key in [
            self.keyspace().tokens_of(id),
            self.keyspace().tokens_legacy(),
        ] {
            removed += redis::cmd("HDEL")
                .arg(key)
                .arg(id)
                .query_async::<i64>(&mut conn)
                .await?;
        }
        if removed == 0 {
            return Err(Error::not_found(format!("token {id}")));
        }
        drop(conn);
        self.announce_revoked(id).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tokens_parse() {
        let good = format!("abt_{}_{}", "a".repeat(12), "0".repeat(64));
        assert!(parse(&good).is_some());
        for bad in [
            "",
            "abt_",
            "abt_x_y",
            &format!("abt_{}_{}", "g".repeat(12), "0".repeat(64)),
            &format!("xyz_{}_{}", "a".repeat(12), "0".repeat(64)),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(secure_eq("abc", "abc"));
        assert!(!secure_eq("abc", "abd"));
        assert!(!secure_eq("abc", "abcd"));
    }
}
