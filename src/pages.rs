//! Pages of a stream bounded in entries and in bytes:
//! what one listing holds in memory does not grow with what was stored,
//! and a `next` cursor continues where a page stopped.

use redis::Value;

use crate::bus::AgentBus;
use crate::codec::StreamEntry;
use crate::error::{Error, Result};

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

/// About the most bytes one read of a page asks Redis for.
const CHUNK_BYTES: usize = 1024 * 1024;

/// Most entries one page may ask for.
pub const MAX_PAGE_ENTRIES: usize = 10_000;

impl AgentBus {
    /// Up to `limit` entries of `stream` (1 to 10,000) after the entry id
    /// `after` (exclusive; validated, naming `after`), oldest first: for
    /// listings of small entries (dead letters, stranded events).
    pub(crate) async fn entries_after(
        &self,
        stream: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamEntry>> {
        let start = match after {
            Some(id) => {
                crate::jobs::validate_stream_id("after", id)?;
                format!("({id}")
            }
            None => "-".into(),
        };
        let mut conn = self.redis().conn().await?;
        let value: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit.clamp(1, MAX_PAGE_ENTRIES))
            .query_async(&mut conn)
            .await?;
        let Value::Array(items) = value else {
            return Ok(Vec::new());
        };
        items.iter().map(StreamEntry::from_value).collect()
    }

    /// Up to `count` entries of `stream` after `start` (`-` or `(<id>`),
    /// at most `Limits::max_page_bytes` of field values (a page always has
    /// an entry when one is left); `None` when `must_exist` (the stream
    /// itself, or e.g. its job) does not exist.
    ///
    /// Read in chunks sized from the entries seen so far, one command each,
    /// so Redis serves other clients between them and reads at most one
    /// entry past the bound (never a whole chunk of large entries).
    pub(crate) async fn stream_page(
        &self,
        stream: &str,
        must_exist: &str,
        start: &str,
        count: usize,
    ) -> Result<Option<StreamPage>> {
        self.stream_page_in(stream, must_exist, start, count, false)
            .await
    }

    /// As [`AgentBus::stream_page`], newest first when `newest_first`
    /// (`start` is then `+` or `(<id>`, and the page goes back from it).
    pub(crate) async fn stream_page_in(
        &self,
        stream: &str,
        must_exist: &str,
        start: &str,
        count: usize,
        newest_first: bool,
    ) -> Result<Option<StreamPage>> {
        let (read, open_end, far_end) = if newest_first {
            ("XREVRANGE", "+", "-")
        } else {
            ("XRANGE", "-", "+")
        };
        if start != open_end
            && start
                .strip_prefix('(')
                .is_none_or(|id| crate::jobs::validate_stream_id("after", id).is_err())
        {
            return Err(Error::invalid(
                "after",
                format!("must be {open_end} or (<stream id>"),
            ));
        }
        let count = count.clamp(1, MAX_PAGE_ENTRIES);
        let max_bytes = self.limits().max_page_bytes.max(1);
        let mut conn = self.redis().conn().await?;
        let exists: bool = redis::cmd("EXISTS")
            .arg(must_exist)
            .query_async(&mut conn)
            .await?;
        if !exists {
            return Ok(None);
        }
        let mut entries: Vec<StreamEntry> = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = start.to_string();
        // The first read measures one entry; later ones are sized from the average.
        let mut chunk = 1usize;
        loop {
            let want = chunk.min(count - entries.len());
            let value: Value = redis::cmd(read)
                .arg(stream)
                .arg(&cursor)
                .arg(far_end)
                .arg("COUNT")
                .arg(want)
                .query_async(&mut conn)
                .await?;
            let Value::Array(items) = value else {
                return Err(Error::protocol(format!("{read} answered {value:?}")));
            };
            let got = items.len();
            for item in &items {
                let entry = StreamEntry::from_value(item)?;
                let size: usize = entry.fields.iter().map(|(_, v)| v.len()).sum();
                if !entries.is_empty() && bytes + size > max_bytes {
                    return Ok(Some(StreamPage {
                        entries,
                        more: true,
                    }));
                }
                bytes += size;
                cursor = format!("({}", entry.id);
                entries.push(entry);
                if entries.len() == count {
                    return Ok(Some(StreamPage {
                        entries,
                        more: true,
                    }));
                }
            }
            if got < want {
                return Ok(Some(StreamPage {
                    entries,
                    more: false,
                }));
            }
            // About what is left of the page, and at most ~1 MiB per command:
            // a big read keeps Redis from every other client while it copies.
            let average = (bytes / entries.len().max(1)).max(1);
            let left = max_bytes.saturating_sub(bytes).min(CHUNK_BYTES);
            chunk = (left / average).clamp(1, 64);
        }
    }
}
