//! The agent registry: instances, their heartbeats and liveness.
//!
//! `ab:{t}:agents` is a zset of instance ids scored by last heartbeat (ms);
//! `ab:{t}:agent:<instance>` holds the details. Sets per agent type and per
//! job make listing and broadcast cheap. An instance silent for longer than
//! `Limits::stale_after` is stale: reported so at once, and marked so by the
//! reaper.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bus::AgentBus;
use crate::error::{Error, Result};
use crate::keys::{Chore, Ident, TenantId};
use crate::scripts::scripts;

/// Instances `reap_agents` examines per call.
pub const REAP_MOST: i64 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Starting,
    Running,
    Idle,
    Stopped,
    Stale,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Starting => "starting",
            AgentStatus::Running => "running",
            AgentStatus::Idle => "idle",
            AgentStatus::Stopped => "stopped",
            AgentStatus::Stale => "stale",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "starting" => AgentStatus::Starting,
            "running" => AgentStatus::Running,
            "idle" => AgentStatus::Idle,
            "stopped" => AgentStatus::Stopped,
            "stale" => AgentStatus::Stale,
            _ => return None,
        })
    }

    /// Whether the instance may be invoked.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AgentStatus::Running | AgentStatus::Idle | AgentStatus::Starting
        )
    }
}

/// The body of `POST /agents/register`.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub agent_id: Ident,
    #[serde(default)]
    pub instance_id: Option<Ident>,
    #[serde(default)]
    pub job_id: Option<Uuid>,
    #[serde(default)]
    pub capabilities: Option<serde_json::Value>,
}

impl Registration {
    pub fn new(agent_id: &str) -> Result<Self> {
        Ok(Self {
            agent_id: Ident::new("agent_id", agent_id)?,
            instance_id: None,
            job_id: None,
            capabilities: None,
        })
    }

    pub fn instance(mut self, instance_id: &str) -> Result<Self> {
        self.instance_id = Some(Ident::new("instance_id", instance_id)?);
        Ok(self)
    }

    pub fn job(mut self, job: Uuid) -> Self {
        self.job_id = Some(job);
        self
    }
}

/// One registered instance.
#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    pub instance_id: String,
    pub agent_id: String,
    pub job_id: Option<Uuid>,
    pub status: AgentStatus,
    pub capabilities: serde_json::Value,
    pub registered_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
}

/// Filters of `GET /agents`.
#[derive(Clone, Debug, Default)]
pub struct AgentFilter {
    pub agent_id: Option<Ident>,
    pub job_id: Option<Uuid>,
    pub status: Option<AgentStatus>,
}

impl AgentFilter {
    fn matches(&self, i: &Instance) -> bool {
        self.agent_id
            .as_ref()
            .is_none_or(|a| a.as_str() == i.agent_id)
            && self.job_id.is_none_or(|j| i.job_id == Some(j))
            && self.status.is_none_or(|s| i.status == s)
    }
}

/// A score bound of a registry index read.
#[derive(Clone, Copy)]
enum Bound {
    Inf,
    /// At or above (as a lower bound).
    From(i64),
    /// Strictly below (as an upper bound).
    Below(i64),
}

impl Bound {
    /// The ZRANGEBYSCORE argument; `Inf` is +inf as a maximum, -inf as a minimum.
    fn arg(self, as_max: bool) -> String {
        match self {
            Bound::Inf if as_max => "+inf".into(),
            Bound::Inf => "-inf".into(),
            Bound::From(v) => v.to_string(),
            Bound::Below(v) => format!("({v}"),
        }
    }
}

const MAX_CAPABILITIES_BYTES: usize = 16 * 1024;

fn millis(ms: Option<&String>) -> Option<DateTime<Utc>> {
    ms.and_then(|v| v.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis)
}

impl AgentBus {
    fn instance_from_hash(&self, h: &HashMap<String, String>) -> Option<Instance> {
        let instance_id = h.get("instance_id")?.clone();
        let mut status = h
            .get("status")
            .and_then(|s| AgentStatus::parse(s))
            .unwrap_or(AgentStatus::Stale);
        let heartbeat_at = millis(h.get("heartbeat_at"));
        // Liveness is computed, not only reaped: a silent instance reads as stale at once.
        if status.is_live()
            && heartbeat_at.is_none_or(|at| {
                Utc::now() - at
                    > chrono::Duration::from_std(self.limits().stale_after).unwrap_or_default()
            })
        {
            status = AgentStatus::Stale;
        }
        Some(Instance {
            instance_id,
            agent_id: h.get("agent_id").cloned().unwrap_or_default(),
            job_id: h.get("job_id").and_then(|j| Uuid::parse_str(j).ok()),
            status,
            capabilities: h
                .get("capabilities")
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or(serde_json::Value::Null),
            registered_at: millis(h.get("registered_at")),
            heartbeat_at,
        })
    }

    /// Registers an instance (a new id when none is given) and creates its inbox.
    pub async fn register_agent(&self, tenant: &TenantId, reg: &Registration) -> Result<Instance> {
        let instance = match &reg.instance_id {
            Some(i) => i.clone(),
            None => Ident::new(
                "instance_id",
                format!(
                    "{}-{}",
                    reg.agent_id,
                    &Uuid::new_v4().simple().to_string()[..12]
                ),
            )?,
        };
        let capabilities = reg
            .capabilities
            .clone()
            .unwrap_or_else(|| serde_json::json!([]));
        let capabilities =
            serde_json::to_string(&capabilities).map_err(|e| Error::Codec(e.to_string()))?;
        if capabilities.len() > MAX_CAPABILITIES_BYTES {
            return Err(Error::invalid(
                "capabilities",
                format!("at most {MAX_CAPABILITIES_BYTES} bytes of JSON"),
            ));
        }
        self.register_tenant(tenant).await?;
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let reply = scripts()
            .agent_register
            .key("agents", keys.agents())
            .key("agent", keys.agent(&instance))
            .key("inbox", keys.inbox(&instance))
            .key("read_early", keys.inbox_read_early(&instance))
            .arg("instance", instance.as_str())
            .arg("agent", reg.agent_id.as_str())
            .arg("job", reg.job_id.map(|j| j.to_string()).unwrap_or_default())
            .arg("capabilities", capabilities)
            .arg("status", AgentStatus::Running.as_str())
            .arg("most_instances", self.limits().max_instances)
            .arg("by_type", keys.agents_of_type_prefix())
            .arg("by_job", keys.agents_of_job_prefix())
            .arg("by_status", keys.agents_with_status_prefix())
            .due(
                self.due_key(Chore::Reap, tenant),
                tenant.as_str(),
                self.stale_at(),
            )
            .invoke(&mut conn)
            .await?;
        if reply.is("limit") {
            return Err(Error::LimitReached {
                what: "agent instances registered by this tenant",
                max: self.limits().max_instances,
            });
        }
        // A record kept from an earlier deregistration is over.
        redis::pipe()
            .cmd("DEL")
            .arg(keys.agent_stopped(&instance))
            .ignore()
            .cmd("ZREM")
            .arg(keys.agents_stopped())
            .arg(instance.as_str())
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        drop(conn);
        self.agent(tenant, &instance).await
    }

    /// Records a heartbeat (and optionally a new status).
    pub async fn heartbeat(
        &self,
        tenant: &TenantId,
        instance: &Ident,
        status: Option<AgentStatus>,
    ) -> Result<AgentStatus> {
        if let Some(s) = status
            && !matches!(
                s,
                AgentStatus::Running | AgentStatus::Idle | AgentStatus::Stopped
            )
        {
            return Err(Error::invalid("status", "must be running, idle or stopped"));
        }
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let reply = scripts()
            .agent_heartbeat
            .key("agents", keys.agents())
            .key("agent", keys.agent(instance))
            .arg("instance", instance.as_str())
            .arg("status", status.map(|s| s.as_str()).unwrap_or(""))
            .arg("by_type", keys.agents_of_type_prefix())
            .arg("by_job", keys.agents_of_job_prefix())
            .arg("by_status", keys.agents_with_status_prefix())
            // A stale instance that beats again is live: due when it would
            // turn stale (for one already live, ZADD LT keeps the earlier).
            .due(
                self.due_key(Chore::Reap, tenant),
                tenant.as_str(),
                self.stale_at(),
            )
            .invoke(&mut conn)
            .await?;
        match reply.tag() {
            "ok" => {
                AgentStatus::parse(reply.text("status")?).ok_or_else(|| Error::protocol("status"))
            }
            _ => Err(Error::not_found(format!("agent instance {instance}"))),
        }
    }

    /// Removes an instance; its record stays as `stopped` (`GET`, and
    /// listed with `status=stopped`) and its inbox readable, both for
    /// `inbox_retention`.
    pub async fn deregister_agent(&self, tenant: &TenantId, instance: &Ident) -> Result<()> {
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let reply = scripts()
            .agent_deregister
            .key("agents", keys.agents())
            .key("agent", keys.agent(instance))
            .key("inbox", keys.inbox(instance))
            .key("stopped", keys.agent_stopped(instance))
            .key("stopped_index", keys.agents_stopped())
            .key("read_early", keys.inbox_read_early(instance))
            .arg("instance", instance.as_str())
            .arg(
                "inbox_retention",
                self.limits().inbox_retention.as_secs().max(1),
            )
            .arg("by_type", keys.agents_of_type_prefix())
            .arg("by_job", keys.agents_of_job_prefix())
            .arg("by_status", keys.agents_with_status_prefix())
            .invoke(&mut conn)
            .await?;
        if reply.is("missing") {
            return Err(Error::not_found(format!("agent instance {instance}")));
        }
        Ok(())
    }

    /// A registered instance, or the kept record of a deregistered one
    /// (`stopped`).
    pub async fn agent(&self, tenant: &TenantId, instance: &Ident) -> Result<Instance> {
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let (live, stopped): (HashMap<String, String>, HashMap<String, String>) = redis::pipe()
            .cmd("HGETALL")
            .arg(keys.agent(instance))
            .cmd("HGETALL")
            .arg(keys.agent_stopped(instance))
            .query_async(&mut conn)
            .await?;
        self.instance_from_hash(&live)
            .or_else(|| self.instance_from_hash(&stopped))
            .ok_or_else(|| Error::not_found(format!("agent instance {instance}")))
    }

    /// Instances matching the filter, most recent heartbeat first.
    ///
    /// Reads one registry index (type, else job, else status, else all) in
    /// heartbeat order and stops at `limit` matches: a single filter costs
    /// O(limit); a combined one reads that index until `limit` match.
    pub async fn list_agents(
        &self,
        tenant: &TenantId,
        filter: &AgentFilter,
        limit: usize,
    ) -> Result<Vec<Instance>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.keys(tenant);
        let cutoff = self.stale_cutoff_ms();
        // (index, lowest score, highest score) to read, newest first.
        let sources: Vec<(String, Bound, Bound)> = if filter.status == Some(AgentStatus::Stopped) {
            // Those that said they stopped, and those deregistered (kept).
            vec![
                (
                    keys.agents_with_status(AgentStatus::Stopped.as_str()),
                    Bound::Inf,
                    Bound::Inf,
                ),
                (keys.agents_stopped(), Bound::Inf, Bound::Inf),
            ]
        } else if let Some(agent_id) = &filter.agent_id {
            vec![(keys.agents_of_type(agent_id), Bound::Inf, Bound::Inf)]
        } else if let Some(job) = &filter.job_id {
            vec![(keys.agents_of_job(job), Bound::Inf, Bound::Inf)]
        } else if let Some(status) = filter.status {
            match status {
                // Marked stale, or live by their record but silent past the cutoff.
                AgentStatus::Stale => {
                    let mut v = vec![(
                        keys.agents_with_status(AgentStatus::Stale.as_str()),
                        Bound::Inf,
                        Bound::Inf,
                    )];
                    for live in [
                        AgentStatus::Starting,
                        AgentStatus::Running,
                        AgentStatus::Idle,
                    ] {
                        v.push((
                            keys.agents_with_status(live.as_str()),
                            Bound::Inf,
                            Bound::Below(cutoff),
                        ));
                    }
                    v
                }
                AgentStatus::Stopped => vec![(
                    keys.agents_with_status(status.as_str()),
                    Bound::Inf,
                    Bound::Inf,
                )],
                live => vec![(
                    keys.agents_with_status(live.as_str()),
                    Bound::From(cutoff),
                    Bound::Inf,
                )],
            }
        } else {
            vec![(keys.agents(), Bound::Inf, Bound::Inf)]
        };
        let mut out = Vec::new();
        for (index, min, max) in sources {
            out.extend(
                self.read_index(tenant, &index, min, max, filter, limit)
                    .await?,
            );
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.heartbeat_at));
        out.truncate(limit);
        Ok(out)
    }

    /// When an instance beating now turns stale if it stays silent (ms).
    fn stale_at(&self) -> i64 {
        Utc::now().timestamp_millis()
            + i64::try_from(self.limits().stale_after.as_millis()).unwrap_or(i64::MAX / 4)
            + 1
    }

    fn stale_cutoff_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
            - i64::try_from(self.limits().stale_after.as_millis()).unwrap_or(i64::MAX)
    }

    /// Up to `limit` instances of one index (scores within bounds, newest
    /// first) that match the whole filter, read a page at a time.
    async fn read_index(
        &self,
        tenant: &TenantId,
        index: &str,
        min: Bound,
        max: Bound,
        filter: &AgentFilter,
        limit: usize,
    ) -> Result<Vec<Instance>> {
        let keys = self.keys(tenant);
        let page = limit.clamp(16, 500);
        let mut conn = self.redis().conn().await?;
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(index)
                .arg(max.arg(true))
                .arg(min.arg(false))
                .arg("LIMIT")
                .arg(offset)
                .arg(page)
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                return Ok(out);
            }
            let kept = index == keys.agents_stopped();
            let mut pipe = redis::pipe();
            for id in &ids {
                // An id that is not a valid identifier was not written by us: skip it.
                if let Ok(id) = Ident::new("instance_id", id.as_str()) {
                    let record = if kept {
                        keys.agent_stopped(&id)
                    } else {
                        keys.agent(&id)
                    };
                    pipe.cmd("HGETALL").arg(record);
                }
            }
            let hashes: Vec<HashMap<String, String>> = if pipe.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut conn).await?
            };
            out.extend(
                hashes
                    .iter()
                    .filter_map(|h| self.instance_from_hash(h))
                    .filter(|i| filter.matches(i)),
            );
            if out.len() >= limit || ids.len() < page {
                return Ok(out);
            }
            offset += page;
        }
    }

    /// When the next live instance turns stale if it stays silent (ms):
    /// the oldest heartbeat among the live statuses' indexes, plus
    /// `stale_after`.
    pub async fn next_stale_at(&self, tenant: &TenantId) -> Result<Option<i64>> {
        let keys = self.keys(tenant);
        let mut pipe = redis::pipe();
        for live in [
            AgentStatus::Starting,
            AgentStatus::Running,
            AgentStatus::Idle,
        ] {
            pipe.cmd("ZRANGE")
                .arg(keys.agents_with_status(live.as_str()))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        let mut conn = self.redis().conn().await?;
        let firsts: Vec<Vec<(String, f64)>> = pipe.query_async(&mut conn).await?;
        let stale_after =
            i64::try_from(self.limits().stale_after.as_millis()).unwrap_or(i64::MAX / 4);
        Ok(firsts
            .iter()
            .filter_map(|f| f.first().map(|(_, beat)| *beat as i64))
            .min()
            .map(|beat| beat.saturating_add(stale_after) + 1))
    }

    /// Marks instances silent past `stale_after` as stale (at most
    /// [`REAP_MOST`] per call). Returns how many.
    pub async fn reap_agents(&self, tenant: &TenantId) -> Result<i64> {
        let cutoff = self.stale_cutoff_ms();
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        scripts()
            .agent_reap
            .key("agents", keys.agents())
            .arg("cutoff", cutoff)
            .arg("most", REAP_MOST)
            .arg("agent_prefix", keys.agent_prefix())
            .arg("by_type", keys.agents_of_type_prefix())
            .arg("by_job", keys.agents_of_job_prefix())
            .arg("by_status", keys.agents_with_status_prefix())
            .invoke(&mut conn)
            .await?
            .value()
    }
}
