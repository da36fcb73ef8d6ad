//! A per-process cache of tenants' balances, kept exact by Redis itself
//! (client-side caching): the balance is read over one connection with
//! `CLIENT TRACKING ON`, so Redis remembers the credits hashes this process
//! read and pushes an invalidation on that connection the moment one
//! changes, whoever changed it. `GET /credits` of a tenant whose balance did
//! not move since it was last read costs no Redis round trip.
//!
//! The cache is trusted only while the tracking connection is up: until it
//! is (at start, after a lost connection, on a cluster, where it is never
//! made) every read goes to Redis, and losing it empties the cache. A read
//! marks its key before asking Redis and keeps the answer only if no
//! invalidation of the key came in between (an invalidation may overtake
//! the reply it concerns). An entry is also re-read once it is older than
//! the time to live, a bound on anything a live connection could miss.
//! Within this process a request that may move credits drops its tenant's
//! entry before it answers, so its client reads its own change next.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::AgentBus;
use crate::credits::Balance;
use crate::error::Result;
use crate::keys::TenantId;

/// Most balances kept; past it the cache starts over (each is re-read on
/// its tenant's next request), so a flood of tenants costs bounded memory.
const CAPACITY: usize = 100_000;

#[derive(Clone, Copy, Debug)]
enum Slot {
    /// A read of this key is on its way; its answer is kept only if this
    /// mark (the read's ticket) is still here when it comes.
    Reading(u64),
    Ready(Balance, Instant),
}

pub struct BalanceCache {
    /// Shared with the tracking connection, which applies each
    /// invalidation the moment it reads it.
    state: Arc<State>,
    /// The tracking connection while it is up (and the cache live).
    conn: Mutex<Option<MultiplexedConnection>>,
    ttl: Duration,
}

#[derive(Default)]
struct State {
    entries: Mutex<HashMap<String, Slot>>,
    live: AtomicBool,
    tickets: AtomicU64,
}

impl std::fmt::Debug for BalanceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceCache")
            .field("live", &self.is_live())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl BalanceCache {
    /// A cache trusting a balance for at most `ttl`; zero never caches.
    pub fn new(ttl: Duration) -> Self {
        Self {
            state: Arc::default(),
            conn: Mutex::new(None),
            ttl,
        }
    }

    /// Whether balances may be served from the cache now.
    pub fn is_live(&self) -> bool {
        self.state.live.load(Ordering::SeqCst)
    }

    /// A fresh balance of `key`, when the cache may be trusted.
    fn get(&self, key: &str) -> Option<Balance> {
        if !self.is_live() {
            return None;
        }
        match self.state.entries.lock().ok()?.get(key)? {
            Slot::Ready(balance, at) if at.elapsed() < self.ttl => Some(*balance),
            _ => None,
        }
    }

    fn begin(&self, key: &str) -> Option<u64> {
        self.state.begin(key)
    }

    fn put(&self, key: &str, ticket: u64, balance: Balance) {
        self.state.put(key, ticket, balance)
    }

    /// Drops `key` (this process changed it).
    pub fn forget(&self, key: &str) {
        self.state.forget(key)
    }

    fn set_live(&self, conn: Option<MultiplexedConnection>) {
        if let Ok(mut slot) = self.conn.lock() {
            self.state.reset(conn.is_some());
            *slot = conn;
        }
    }

    fn tracking_conn(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().ok()?.clone()
    }
}

impl State {
    /// Marks `key` as being read; the ticket goes back to [`Self::put`].
    fn begin(&self, key: &str) -> Option<u64> {
        let mut entries = self.entries.lock().ok()?;
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst);
        entries.insert(key.to_string(), Slot::Reading(ticket));
        Some(ticket)
    }

    /// Keeps `balance` of `key` if its mark is still the one `ticket` left.
    fn put(&self, key: &str, ticket: u64, balance: Balance) {
        if let Ok(mut entries) = self.entries.lock()
            && let Some(slot) = entries.get_mut(key)
            && matches!(slot, Slot::Reading(t) if *t == ticket)
        {
            *slot = Slot::Ready(balance, Instant::now());
        }
    }

    /// Drops `key` (Redis said it changed, or this process changed it).
    fn forget(&self, key: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    fn forget_all(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    /// Empties the cache and trusts it (or not) from here.
    fn reset(&self, live: bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
            self.live.store(live, Ordering::SeqCst);
        }
    }

    /// Applies one push from the tracking connection; false when it says
    /// the connection is gone (the cache is then no longer trusted).
    fn on_push(&self, push: &PushInfo) -> bool {
        match push.kind {
            PushKind::Invalidate => {
                match push.data.first() {
                    Some(Value::Array(keys)) => {
                        for key in keys {
                            if let Value::BulkString(key) = key {
                                self.forget(&String::from_utf8_lossy(key));
                            }
                        }
                    }
                    // A null list: everything (FLUSHALL, or Redis evicted
                    // its tracking table).
                    _ => self.forget_all(),
                }
                true
            }
            PushKind::Disconnection => {
                self.reset(false);
                false
            }
            _ => true,
        }
    }
}

impl AgentBus {
    /// `tenant`'s balance, from this process's cache when Redis has not
    /// said it changed since it was read (see [`crate::balance_cache`]),
    /// else read from Redis.
    pub async fn balance_cached(&self, tenant: &TenantId) -> Result<Balance> {
        let cache = self.balance_cache();
        let key = self.keys(tenant).credits();
        if let Some(balance) = cache.get(&key) {
            return Ok(balance);
        }
        let Some(mut conn) = cache.tracking_conn().filter(|_| cache.is_live()) else {
            return self.balance(tenant).await;
        };
        let Some(ticket) = cache.begin(&key) else {
            return self.balance(tenant).await;
        };
        let read: redis::RedisResult<(Option<i64>, Option<i64>, Option<i64>)> = redis::cmd("HMGET")
            .arg(&key)
            .arg("total")
            .arg("reserved")
            .arg("spent")
            .query_async(&mut conn)
            .await;
        match read {
            Ok((total, reserved, spent)) => {
                let balance = Balance::from_minor(
                    total.unwrap_or(0),
                    reserved.unwrap_or(0),
                    spent.unwrap_or(0),
                );
                cache.put(&key, ticket, balance);
                Ok(balance)
            }
            // The tracking connection failed (its task finds out and stops
            // trusting the cache): this read goes the ordinary way.
            Err(_) => {
                cache.forget(&key);
                self.balance(tenant).await
            }
        }
    }

    /// Drops `tenant`'s cached balance: called by a request that may have
    /// moved its credits, before it answers.
    pub fn forget_balance(&self, tenant: &TenantId) {
        let cache = self.balance_cache();
        if cache.is_live() {
            cache.forget(&self.keys(tenant).credits());
        }
    }
}

/// Keeps `bus`'s balance cache connected until `shutdown`: opens the
/// tracking connection (a single Redis only), applies every invalidation it
/// pushes, and stops trusting the cache whenever the connection is lost.
pub async fn run(bus: AgentBus, shutdown: CancellationToken) {
    let cache = bus.balance_cache();
    if cache.ttl.is_zero() {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        // Invalidations are applied by the connection as it reads them (no
        // hop through another task); losing it is told to this loop.
        let (lost, mut gone) = mpsc::unbounded_channel::<()>();
        let state = cache.state.clone();
        let apply = move |push: PushInfo| -> std::result::Result<(), ()> {
            if !state.on_push(&push) {
                let _ = lost.send(());
            }
            Ok(())
        };
        let opened: Result<Option<MultiplexedConnection>> = async {
            let Some(mut conn) = bus.redis().tracking(apply).await? else {
                return Ok(None);
            };
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .query_async::<()>(&mut conn)
                .await?;
            Ok(Some(conn))
        }
        .await;
        let conn = match opened {
            // A cluster: no tracking; every balance is read from Redis.
            Ok(None) => return,
            Ok(Some(conn)) => conn,
            Err(e) => {
                e.count_failure();
                tracing::debug!(error = %e, "balance cache: cannot open the tracking connection; balances read from Redis");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        cache.set_live(Some(conn));
        // Until shutdown or the connection is lost (invalidations may be
        // lost from there: the push handler already stopped trusting).
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = gone.recv() => {}
        }
        cache.set_live(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(total: i64) -> Balance {
        Balance::from_minor(total, 0, 0)
    }

    fn live(cache: &BalanceCache) {
        cache.state.live.store(true, Ordering::SeqCst);
    }

    #[test]
    fn an_answer_overtaken_by_its_invalidation_is_not_kept() {
        let cache = BalanceCache::new(Duration::from_secs(60));
        live(&cache);
        let ticket = cache.begin("k").expect("lock");
        cache.forget("k");
        cache.put("k", ticket, balance(1));
        assert!(cache.get("k").is_none());
        let ticket = cache.begin("k").expect("lock");
        cache.put("k", ticket, balance(2));
        assert_eq!(cache.get("k"), Some(balance(2)));
        cache.forget("k");
        assert!(cache.get("k").is_none());
    }

    #[test]
    fn a_later_read_supersedes_an_earlier_one() {
        let cache = BalanceCache::new(Duration::from_secs(60));
        live(&cache);
        let first = cache.begin("k").expect("lock");
        let second = cache.begin("k").expect("lock");
        cache.put("k", first, balance(1));
        assert!(cache.get("k").is_none(), "the earlier read may be older");
        cache.put("k", second, balance(2));
        assert_eq!(cache.get("k"), Some(balance(2)));
    }

    #[test]
    fn nothing_is_trusted_while_not_live_or_past_its_time() {
        let cache = BalanceCache::new(Duration::from_millis(30));
        let ticket = cache.begin("k").expect("lock");
        cache.put("k", ticket, balance(1));
        assert!(cache.get("k").is_none(), "not live");
        live(&cache);
        let ticket = cache.begin("k").expect("lock");
        cache.put("k", ticket, balance(1));
        assert!(cache.get("k").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get("k").is_none(), "past its time to live");
    }

    #[test]
    fn a_null_invalidation_drops_everything_and_a_disconnection_ends_trust() {
        let cache = BalanceCache::new(Duration::from_secs(60));
        live(&cache);
        for k in ["a", "b"] {
            let t = cache.begin(k).expect("lock");
            cache.put(k, t, balance(1));
        }
        let keys = PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![Value::BulkString(b"a".to_vec())])],
        };
        assert!(cache.state.on_push(&keys));
        assert!(cache.get("a").is_none() && cache.get("b").is_some());
        let all = PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        };
        assert!(cache.state.on_push(&all));
        assert!(cache.get("b").is_none());
        let gone = PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        };
        assert!(!cache.state.on_push(&gone));
        assert!(!cache.is_live());
    }
}
