//! The process's table of callers waiting for replies, by tenant and
//! correlation id. Plain data: the readers that fill it live in
//! [`crate::agents::replies`], which the bus handle does not depend on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::codec::StreamEntry;
use crate::keys::TenantId;

pub(crate) type Waiters = Mutex<HashMap<String, oneshot::Sender<StreamEntry>>>;

pub(crate) struct TenantReader {
    pub(crate) waiters: Waiters,
}

/// The process's reply readers, by tenant.
#[derive(Default)]
pub struct ReplyHub {
    pub(crate) readers: Mutex<HashMap<TenantId, Arc<TenantReader>>>,
}

/// A registered wait for one reply; dropping it withdraws the registration.
pub struct ReplyWaiter {
    pub(crate) rx: oneshot::Receiver<StreamEntry>,
    pub(crate) reader: Arc<TenantReader>,
    pub(crate) correlation: String,
}

impl ReplyWaiter {
    /// The reply, or `None` after `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<StreamEntry> {
        tokio::time::timeout(timeout, &mut self.rx).await.ok()?.ok()
    }
}

impl Drop for ReplyWaiter {
    fn drop(&mut self) {
        if let Ok(mut w) = self.reader.waiters.lock() {
            w.remove(&self.correlation);
        }
    }
}
