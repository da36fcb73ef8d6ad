//! Listing an inbox without changing it: each message with its status
//! (from the group's pending entries and last delivered id).

use std::collections::HashSet;

use redis::Value;

use crate::bus::AgentBus;
use crate::error::Result;
use crate::jobs::validate_stream_id;
use crate::keys::{Ident, TenantId};

use super::{GROUP, Message, MessageFilter, MessagePage, MessageStatus};

impl AgentBus {
    /// Lists an inbox without changing it: each message with its status.
    pub async fn list_messages(
        &self,
        tenant: &TenantId,
        instance: &Ident,
        filter: &MessageFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MessagePage> {
        if let Some(r) = &filter.reply_to_id {
            crate::keys::validate_id("reply_to_id", r, crate::keys::MAX_ID_LEN)?;
        }
        let inbox = self.keys(tenant).inbox(instance);
        let start = match (after, filter.since) {
            (Some(id), _) => {
                validate_stream_id("after", id)?;
                format!("({id}")
            }
            // Entries of that millisecond on: after the last id of the one before.
            (None, Some(t)) if t.timestamp_millis() > 0 => {
                format!("({}-{}", t.timestamp_millis() - 1, u64::MAX)
            }
            (None, _) => "-".to_string(),
        };
        // Filters skip entries: look at a window of several pages' worth,
        // itself bounded in bytes.
        let scan = (limit * 5).clamp(100, 5000);
        let Some(page) = self.stream_page(&inbox, &inbox, &start, scan).await? else {
            // No inbox: unknown instance, unless it is registered (then empty).
            self.agent(tenant, instance).await?;
            return Ok(MessagePage::default());
        };
        let window_next = page.next();
        let window = page.entries;
        let mut conn = self.redis().conn().await?;
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&inbox)
            .query_async(&mut conn)
            .await?;
        let last_delivered = last_delivered_id(&groups);
        let pending_ids: HashSet<String> =
            if let (Some(first), Some(last)) = (window.first(), window.last()) {
                let pel: Value = redis::cmd("XPENDING")
                    .arg(&inbox)
                    .arg(GROUP)
                    .arg(&first.id)
                    .arg(&last.id)
                    .arg(scan)
                    .query_async(&mut conn)
                    .await?;
                pel_ids(&pel)
            } else {
                HashSet::new()
            };
        let delivered = |id: &str| {
            last_delivered
                .as_ref()
                .is_some_and(|last| stream_id_le(id, last))
        };
        // Not yet delivered but marked read (the original's list-then-mark flow).
        let undelivered: Vec<&str> = window
            .iter()
            .map(|e| e.id.as_str())
            .filter(|id| !delivered(id))
            .collect();
        let read_early: HashSet<&str> = if undelivered.is_empty() {
            HashSet::new()
        } else {
            let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
                .arg(self.keys(tenant).inbox_read_early(instance))
                .arg(&undelivered)
                .query_async(&mut conn)
                .await?;
            undelivered
                .iter()
                .zip(scores)
                .filter_map(|(id, s)| s.map(|_| *id))
                .collect()
        };
        let mut out = Vec::new();
        for e in &window {
            let mut m = Message::from_entry(e)?;
            let status = if pending_ids.contains(&e.id) {
                MessageStatus::Delivered
            } else if delivered(&e.id) || read_early.contains(e.id.as_str()) {
                MessageStatus::Read
            } else {
                MessageStatus::Pending
            };
            m.status = Some(status);
            let keep = filter.status.is_none_or(|s| s == status)
                && filter
                    .message_type
                    .as_ref()
                    .is_none_or(|t| *t == m.message_type)
                && filter.job_id.is_none_or(|j| m.job_id == Some(j))
                && filter
                    .reply_to_id
                    .as_ref()
                    .is_none_or(|r| m.reply_to_id.as_ref() == Some(r));
            if keep {
                out.push(m);
                if out.len() >= limit {
                    let next = out.last().map(|m| m.entry_id.clone());
                    return Ok(MessagePage {
                        messages: out,
                        next,
                    });
                }
            }
        }
        Ok(MessagePage {
            messages: out,
            next: window_next,
        })
    }
}

/// How full an inbox is (`GET /agents?inbox=true`, the console).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct InboxDepth {
    /// Messages the inbox keeps (read ones too, until trimmed or expired).
    pub messages: u64,
    /// Delivered and not yet read (acknowledged).
    pub delivered_unread: u64,
}

impl AgentBus {
    /// The depth of each instance's inbox, in order: two pipelined round
    /// trips for them all (an inbox that is gone is empty).
    pub async fn inbox_depths(
        &self,
        tenant: &TenantId,
        instances: &[String],
    ) -> Result<Vec<InboxDepth>> {
        let keys = self.keys(tenant);
        let inboxes: Vec<Option<String>> = instances
            .iter()
            .map(|i| {
                Ident::new("instance", i.as_str())
                    .ok()
                    .map(|i| keys.inbox(&i))
            })
            .collect();
        let mut out = vec![InboxDepth::default(); instances.len()];
        let mut conn = self.redis().conn().await?;
        let mut lengths = redis::pipe();
        for inbox in inboxes.iter().flatten() {
            lengths.cmd("XLEN").arg(inbox);
        }
        if lengths.is_empty() {
            return Ok(out);
        }
        let lens: Vec<u64> = lengths.query_async(&mut conn).await?;
        let mut pending = redis::pipe();
        let mut asked = Vec::new();
        let mut lens = lens.into_iter();
        for (i, inbox) in inboxes.iter().enumerate() {
            let Some(inbox) = inbox else { continue };
            out[i].messages = lens.next().unwrap_or(0);
            if out[i].messages > 0 {
                pending.cmd("XPENDING").arg(inbox).arg(GROUP);
                asked.push(i);
            }
        }
        if asked.is_empty() {
            return Ok(out);
        }
        // A group missing (being re-created) fails the pipeline: the
        // delivered count is then left at 0 rather than failing the listing.
        if let Ok(summaries) = pending.query_async::<Vec<Value>>(&mut conn).await {
            for (i, summary) in asked.into_iter().zip(summaries) {
                if let Value::Array(v) = summary
                    && let Some(Value::Int(n)) = v.first()
                {
                    out[i].delivered_unread = (*n).max(0) as u64;
                }
            }
        }
        Ok(out)
    }
}

fn pel_ids(pel: &Value) -> HashSet<String> {
    let mut ids = HashSet::new();
    if let Value::Array(rows) = pel {
        for row in rows {
            if let Value::Array(cols) = row
                && let Some(Value::BulkString(id)) = cols.first()
            {
                ids.insert(String::from_utf8_lossy(id).into_owned());
            }
        }
    }
    ids
}

pub(super) fn last_delivered_id(groups: &Value) -> Option<String> {
    let Value::Array(groups) = groups else {
        return None;
    };
    for g in groups {
        let fields: Vec<(String, String)> = match g {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|p| match p {
                    [Value::BulkString(k), Value::BulkString(v)] => Some((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )),
                    _ => None,
                })
                .collect(),
            Value::Map(kv) => kv
                .iter()
                .filter_map(|(k, v)| match (k, v) {
                    (Value::BulkString(k), Value::BulkString(v)) => Some((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )),
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        let is_inbox = fields.iter().any(|(k, v)| k == "name" && v == GROUP);
        if is_inbox {
            return fields
                .into_iter()
                .find(|(k, _)| k == "last-delivered-id")
                .map(|(_, v)| v);
        }
    }
    None
}

/// `a <= b` for stream ids `<ms>-<seq>`.
fn stream_id_le(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> (u64, u64) {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) <= parse(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_compare_numerically() {
        assert!(super::stream_id_le("9-1", "10-0"));
        assert!(super::stream_id_le("10-2", "10-2"));
        assert!(!super::stream_id_le("10-3", "10-2"));
    }
}
