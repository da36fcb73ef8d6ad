//! Operator views of live state: a job or an agent with everything Redis
//! knows about it (`agentbus inspect`), and a live tail of any stream of a
//! tenant (`agentbus tail`).

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Value;
use serde::Serialize;
use uuid::Uuid;

use crate::agents::registry::Instance;
use crate::bus::AgentBus;
use crate::codec::{self, StreamEntry};
use crate::error::{Error, Result};
use crate::jobs::Job;
use crate::keys::{Ident, TenantId};

/// A consumer group of a stream, as `XINFO GROUPS` reports it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupInfo {
    pub name: String,
    pub consumers: i64,
    pub pending: i64,
    pub last_delivered_id: String,
}

/// One consumer, as `XINFO CONSUMERS` reports it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: i64,
    pub idle_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamInfo {
    pub key: String,
    pub length: i64,
    pub groups: Vec<GroupInfo>,
    pub consumers: Vec<ConsumerInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobInspection {
    /// As `GET /api/v1/jobs/{id}` shows it.
    pub job: Job,
    /// As `HGETALL` shows it.
    pub hash: BTreeMap<String, String>,
    pub items: StreamInfo,
    /// Items in a terminal state (`BITCOUNT` of the done bitmap).
    pub done_items: i64,
    pub results: i64,
    /// Seconds until the job's keys expire (-1: no expiry while running).
    pub ttl_secs: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentInspection {
    pub instance: Instance,
    pub hash: BTreeMap<String, String>,
    pub inbox: StreamInfo,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Nil => String::new(),
        other => format!("{other:?}"),
    }
}

/// `XINFO` replies (RESP2 flat arrays or RESP3 maps) as name → value text.
fn fields(v: &Value) -> BTreeMap<String, String> {
    match v {
        Value::Array(kv) => kv
            .chunks(2)
            .filter_map(|p| match p {
                [k, v] => Some((text(k), text(v))),
                _ => None,
            })
            .collect(),
        Value::Map(kv) => kv.iter().map(|(k, v)| (text(k), text(v))).collect(),
        _ => BTreeMap::new(),
    }
}

impl AgentBus {
    async fn stream_info(&self, key: &str, group: &str) -> Result<StreamInfo> {
        let mut conn = self.redis().conn().await?;
        let length: i64 = redis::cmd("XLEN").arg(key).query_async(&mut conn).await?;
        let mut info = StreamInfo {
            key: key.to_string(),
            length,
            ..Default::default()
        };
        let exists: bool = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await?;
        if !exists {
            return Ok(info);
        }
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        if let Value::Array(groups) = groups {
            for g in &groups {
                let f = fields(g);
                info.groups.push(GroupInfo {
                    name: f.get("name").cloned().unwrap_or_default(),
                    consumers: f.get("consumers").and_then(|v| v.parse().ok()).unwrap_or(0),
                    pending: f.get("pending").and_then(|v| v.parse().ok()).unwrap_or(0),
                    last_delivered_id: f.get("last-delivered-id").cloned().unwrap_or_default(),
                });
            }
        }
        if info.groups.iter().any(|g| g.name == group) {
            let consumers: Value = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(key)
                .arg(group)
                .query_async(&mut conn)
                .await?;
            if let Value::Array(consumers) = consumers {
                for c in &consumers {
                    let f = fields(c);
                    info.consumers.push(ConsumerInfo {
                        name: f.get("name").cloned().unwrap_or_default(),
                        pending: f.get("pending").and_then(|v| v.parse().ok()).unwrap_or(0),
                        idle_ms: f.get("idle").and_then(|v| v.parse().ok()).unwrap_or(0),
                    });
                }
            }
        }
        Ok(info)
    }

    /// Everything Redis holds about one job.
    pub async fn inspect_job(&self, tenant: &TenantId, id: &Uuid) -> Result<JobInspection> {
        let job = self.job(tenant, id).await?;
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let (hash, done_items, results, ttl_secs): (BTreeMap<String, String>, i64, i64, i64) =
            redis::pipe()
                .cmd("HGETALL")
                .arg(keys.job(id))
                .cmd("BITCOUNT")
                .arg(keys.job_done(id))
                .cmd("XLEN")
                .arg(keys.job_results(id))
                .cmd("TTL")
                .arg(keys.job(id))
                .query_async(&mut conn)
                .await?;
        drop(conn);
        Ok(JobInspection {
            job,
            hash,
            items: self.stream_info(&keys.job_items(id), "workers").await?,
            done_items,
            results,
            ttl_secs,
        })
    }

    /// Everything Redis holds about one agent instance.
    pub async fn inspect_agent(
        &self,
        tenant: &TenantId,
        instance: &Ident,
    ) -> Result<AgentInspection> {
        let found = self.agent(tenant, instance).await?;
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let hash: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.agent(instance))
            .query_async(&mut conn)
            .await?;
        drop(conn);
        Ok(AgentInspection {
            instance: found,
            hash,
            inbox: self.stream_info(&keys.inbox(instance), "inbox").await?,
        })
    }

    /// The key of a tenant's stream named by what follows `ab:{t}:` (for
    /// example `outbox`, `dlq`, `inbox:<instance>`, `job:<id>:results`).
    pub fn tenant_stream(&self, tenant: &TenantId, name: &str) -> Result<String> {
        let ok = !name.is_empty()
            && name.len() <= 200
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
        if !ok {
            return Err(Error::invalid(
                "stream",
                "like outbox, dlq, inbox:<instance> or job:<id>:results",
            ));
        }
        let outbox = self.keys(tenant).outbox();
        Ok(format!(
            "{}{name}",
            &outbox[..outbox.len() - "outbox".len()]
        ))
    }

    /// Follows a stream, calling `each` with every entry as JSON (MessagePack
    /// fields decoded) until `count` entries (0: forever). Starts after `from`
    /// (`$`: only new entries).
    pub async fn tail(
        &self,
        key: &str,
        from: &str,
        count: usize,
        mut each: impl FnMut(serde_json::Value),
    ) -> Result<()> {
        let mut conn = self.redis().blocking();
        let mut last = from.to_string();
        let mut seen = 0;
        let block = Duration::from_secs(5);
        loop {
            let read = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(100)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(key)
                .arg(&last)
                .to_owned();
            let value: Value = conn.query(&read, block).await?;
            for entry in StreamEntry::from_read_reply(&value)? {
                last = entry.id.clone();
                each(entry_json(&entry));
                seen += 1;
                if count > 0 && seen >= count {
                    return Ok(());
                }
            }
        }
    }
}

/// A stream entry as JSON: header fields as text, MessagePack fields decoded.
pub fn entry_json(entry: &StreamEntry) -> serde_json::Value {
    const PACKED: [&str; 8] = [
        "payload",
        "input",
        "output",
        "ctx",
        "request",
        "response",
        "m.payload",
        "m.ctx",
    ];
    let mut map = serde_json::Map::new();
    map.insert("entry_id".into(), entry.id.clone().into());
    for (k, v) in &entry.fields {
        let value = if PACKED.contains(&k.as_str()) {
            codec::decode_json(v).unwrap_or_else(|_| String::from_utf8_lossy(v).into_owned().into())
        } else {
            String::from_utf8_lossy(v).into_owned().into()
        };
        map.insert(k.clone(), value);
    }
    serde_json::Value::Object(map)
}
