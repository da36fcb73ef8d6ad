//! Pages of a stream bounded in entries and in bytes (`lua/stream_page.lua`):
//! what one listing holds in memory does not grow with what was stored,
//! and a `next` cursor continues where a page stopped.

use redis::Value;

use crate::bus::AgentBus;
use crate::codec::{Reply, StreamEntry};
use crate::error::{Error, Result};
use crate::scripts::scripts;

/// One page of a stream.
#[derive(Debug)]
pub struct StreamPage {
    pub entries: Vec<StreamEntry>,
    /// The page stopped at a bound: entries may follow its last one.
    pub more: bool,
}

impl StreamPage {
    /// Where the next page starts (after this one's last entry), if any may follow.
    pub fn next(&self) -> Option<String> {
        self.more
            .then(|| self.entries.last().map(|e| e.id.clone()))
            .flatten()
    }
}

/// Most entries one page may ask for.
pub const MAX_PAGE_ENTRIES: usize = 10_000;

impl AgentBus {
    /// Up to `count` entries of `stream` after `start` (`-` or `(<id>`),
    /// at most `Limits::max_page_bytes` of field values plus one entry;
    /// `None` when `must_exist` (the stream itself, or e.g. its job) does not exist.
    pub(crate) async fn stream_page(
        &self,
        stream: &str,
        must_exist: &str,
        start: &str,
        count: usize,
    ) -> Result<Option<StreamPage>> {
        let mut conn = self.redis().conn().await?;
        let reply = Reply::new(
            scripts()
                .stream_page
                .key(stream)
                .key(must_exist)
                .arg(start)
                .arg(count.clamp(1, MAX_PAGE_ENTRIES))
                .arg(self.limits().max_page_bytes.max(1))
                .invoke_async(&mut conn)
                .await?,
        )?;
        if reply.tag()? == "missing" {
            return Ok(None);
        }
        let entries = match reply.get(1)? {
            Value::Array(items) => items
                .iter()
                .map(StreamEntry::from_value)
                .collect::<Result<Vec<_>>>()?,
            other => return Err(Error::protocol(format!("stream_page entries {other:?}"))),
        };
        Ok(Some(StreamPage {
            entries,
            more: reply.i64(2)? == 1,
        }))
    }
}
