//! Replies to waiting callers: one reader per process and tenant.
//!
//! A caller that waits for a reply (an invoke, `wait_for_reply`) registers a
//! correlation id first, then sends its request naming this process's reply
//! stream `ab:{t}:replies:<process>`. The reader blocks on that stream on a
//! connection of its own and hands each reply to the waiter whose
//! correlation id it carries in `reply_to`. Readers stop when idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::oneshot;

pub use crate::agents::reply_hub::ReplyWaiter;
use crate::agents::reply_hub::TenantReader;
use crate::bus::AgentBus;
use crate::codec::StreamEntry;
use crate::keys::TenantId;

/// A reader with no waiter for this long stops.
const IDLE_STOP: Duration = Duration::from_secs(30);
const BLOCK: Duration = Duration::from_secs(1);

impl AgentBus {
    /// This process's reply stream for `tenant`.
    pub fn reply_stream(&self, tenant: &TenantId) -> String {
        self.keys(tenant).replies(self.process_id())
    }

    /// Registers interest in the reply carrying `correlation` in `reply_to`;
    /// call before sending the request, so the reply cannot slip past.
    pub fn expect_reply(&self, tenant: &TenantId, correlation: &str) -> ReplyWaiter {
        let (tx, rx) = oneshot::channel();
        let hub = self.reply_hub();
        let mut readers = hub.readers.lock().unwrap_or_else(|p| p.into_inner());
        let reader = match readers.get(tenant) {
            Some(r) => r.clone(),
            None => {
                let reader = Arc::new(TenantReader {
                    waiters: Mutex::new(HashMap::new()),
                });
                readers.insert(tenant.clone(), reader.clone());
                tokio::spawn(read_replies(self.clone(), tenant.clone(), reader.clone()));
                reader
            }
        };
        if let Ok(mut w) = reader.waiters.lock() {
            w.insert(correlation.to_string(), tx);
        }
        ReplyWaiter {
            rx,
            reader,
            correlation: correlation.to_string(),
        }
    }
}

async fn read_replies(bus: AgentBus, tenant: TenantId, reader: Arc<TenantReader>) {
    let key = bus.reply_stream(&tenant);
    let mut conn = bus.redis().blocking();
    let mut last_id = "0-0".to_string();
    let mut idle = Duration::ZERO;
    let mut backoff = Duration::from_millis(50);
    loop {
        // Stop when nobody waits, removing ourselves under the hub's lock so a
        // new waiter either finds this reader alive or starts a new one.
        if idle >= IDLE_STOP {
            let hub = bus.reply_hub();
            let mut readers = hub.readers.lock().unwrap_or_else(|p| p.into_inner());
            let empty = reader.waiters.lock().map(|w| w.is_empty()).unwrap_or(true);
            if empty {
                readers.remove(&tenant);
                return;
            }
            idle = Duration::ZERO;
        }
        let read = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last_id)
            .to_owned();
        let entries = match conn
            .query::<Value>(&read, BLOCK)
            .await
            .and_then(|v| StreamEntry::from_read_reply(&v))
        {
            Ok(entries) => {
                backoff = Duration::from_millis(50);
                entries
            }
            Err(e) => {
                e.count_failure();
                tracing::warn!(error = %e, "reply reader: read failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let waiting = reader
            .waiters
            .lock()
            .map(|w| !w.is_empty())
            .unwrap_or(false);
        idle = if entries.is_empty() && !waiting {
            idle + BLOCK
        } else {
            Duration::ZERO
        };
        if entries.is_empty() {
            continue;
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        for entry in entries {
            let Some(correlation) = entry.text("reply_to").map(str::to_string) else {
                continue;
            };
            let waiter = reader
                .waiters
                .lock()
                .ok()
                .and_then(|mut w| w.remove(&correlation));
            if let Some(tx) = waiter {
                let _ = tx.send(entry);
            }
        }
        if let Some(last) = ids.last() {
            last_id = last.clone();
        }
        // Replies are read once: drop them (a late one nobody waits for goes too).
        if let Ok(mut c) = bus.redis().conn().await {
            let _: Result<(), _> = redis::cmd("XDEL")
                .arg(&key)
                .arg(&ids)
                .query_async(&mut c)
                .await;
        }
    }
}
