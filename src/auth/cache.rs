//! A per-process cache of token records: in steady state authenticating a
//! request costs no Redis round trip and reads no shared key.
//!
//! Revoking or rotating a token publishes its id on the tokens channel
//! (`keys.rs`); every process subscribes ([`run`]) and drops that id. The
//! cache is trusted only while the subscription is live: until it is (at
//! start, after a lost connection) every lookup goes to Redis, and going
//! live empties the cache, since what was published meanwhile is lost.
//! A record is re-read once it is older than the cache's time to live,
//! which bounds a revocation whose message a live subscription missed.
//! Within the revoking process the id is dropped before the call returns.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::TokenRecord;
use crate::bus::AgentBus;

/// Most records kept; past it the cache starts over (records are small and
/// re-read on the next request, so a flood of distinct tokens costs memory
/// bounded by this).
const CAPACITY: usize = 100_000;

#[derive(Debug)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (TokenRecord, Instant)>>,
    live: AtomicBool,
    /// Bumped by every forget and every change of liveness: a record read
    /// from Redis before a bump may be stale and is not kept.
    epoch: AtomicU64,
    ttl: Duration,
}

impl TokenCache {
    /// A cache trusting records for `ttl`; `ttl` zero never caches.
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            ttl,
        }
    }

    /// The epoch to hand back to [`put`](Self::put) with a record read now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A fresh record of `id`, when the cache may be trusted.
    pub fn get(&self, id: &str) -> Option<TokenRecord> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (record, at) = entries.get(id)?;
        (at.elapsed() < self.ttl).then(|| record.clone())
    }

    /// Keeps `record`, read from Redis since `epoch`, unless anything was
    /// revoked (or the subscription changed) in between.
    pub fn put(&self, record: &TokenRecord, epoch: u64) {
        if self.ttl.is_zero() || !self.live.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            // Checked under the lock `forget` takes too: no bump slips between.
            if self.epoch.load(Ordering::SeqCst) != epoch {
                return;
            }
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(record.id.clone(), (record.clone(), Instant::now()));
        }
    }

    /// Drops `id` (revoked or rotated).
    pub fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            entries.remove(id);
        }
    }

    /// Whether lookups may be served from the cache now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    fn set_live(&self, live: bool) {
        if let Ok(mut entries) = self.entries.lock() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            entries.clear();
            self.live.store(live, Ordering::SeqCst);
        }
    }
}

/// Keeps `bus`'s token cache in step with revocations until `shutdown`:
/// subscribes to the tokens channel, drops each id published, and stops
/// trusting the cache whenever the subscription is lost.
pub async fn run(bus: AgentBus, shutdown: CancellationToken) {
    let cache = bus.token_cache();
    if cache.ttl.is_zero() {
        return;
    }
    let channel = bus.keyspace().tokens_revoked();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let subscribed: crate::error::Result<redis::aio::PubSub> = async {
            let mut pubsub = bus.redis().pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok(pubsub)
        }
        .await;
        let pubsub = match subscribed {
            Ok(p) => p,
            Err(e) => {
                e.count_failure();
                tracing::debug!(error = %e, "token cache: cannot subscribe; tokens read from Redis");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        cache.set_live(true);
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                message = messages.next() => match message {
                    Some(m) => {
                        if let Ok(id) = m.get_payload::<String>() {
                            cache.forget(&id);
                        }
                    }
                    // The connection is gone: messages may be lost from here.
                    None => break,
                },
            }
        }
        cache.set_live(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TenantId;

    fn record(id: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            tenant: TenantId::new("t").expect("valid"),
            hash: "h".into(),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_record_read_before_a_revocation_is_not_kept() {
        let cache = TokenCache::new(Duration::from_secs(60));
        cache.set_live(true);
        let epoch = cache.epoch();
        // Revoked while the request's read was in flight.
        cache.forget("a");
        cache.put(&record("a"), epoch);
        assert!(cache.get("a").is_none());
        let epoch = cache.epoch();
        cache.put(&record("a"), epoch);
        assert!(cache.get("a").is_some());
        cache.forget("a");
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn nothing_is_trusted_while_not_subscribed_or_past_its_time() {
        let cache = TokenCache::new(Duration::from_secs(60));
        cache.put(&record("a"), cache.epoch());
        assert!(
            cache.get("a").is_none(),
            "kept before the subscription was live"
        );
        cache.set_live(true);
        cache.put(&record("a"), cache.epoch());
        assert!(cache.get("a").is_some());
        cache.set_live(false);
        assert!(
            cache.get("a").is_none(),
            "trusted after the subscription was lost"
        );
        cache.set_live(true);
        assert!(
            cache.get("a").is_none(),
            "kept across a gap in the subscription"
        );

        let short = TokenCache::new(Duration::from_millis(1));
        short.set_live(true);
        short.put(&record("a"), short.epoch());
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get("a").is_none(), "trusted past its time to live");
        let off = TokenCache::new(Duration::ZERO);
        off.set_live(true);
        off.put(&record("a"), off.epoch());
        assert!(off.get("a").is_none());
    }
}
