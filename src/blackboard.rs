//! The blackboard: namespaced shared state for agents, indexed and
//! aggregated in Redis without ever scanning.
//!
//! Each namespace keeps its values in a hash, a by-key zset (listing and
//! paging), a by-score zset of numeric values (ranges, top-k, min and max),
//! and running aggregates (count and an exact sum in micro-units), all
//! changed together by one Lua script per operation. Entries with a TTL sit
//! in an expiry zset that reads and a background sweeper drain in bounded
//! batches. Locks hand out monotonic fencing tokens; a write carrying a stale
//! token is refused. Every operation is metered at the price table's
//! blackboard prices (`credits_flush.lua` turns the meter into ledger events).

use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::{AgentBus, event_base};
use crate::error::{Error, Result};
use crate::keys::{BlackboardKeys, Chore, Ident, TenantId};
use crate::metrics;
use crate::money::{self, from_minor};
use crate::scripts::{Answer, Call, Lua, scripts};

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 256;
/// Most entries one read returns, and the largest offset (as bb_read.lua checks).
/// Most entries one read script returns (REST: 1,000 too): a script's work
/// stays bounded whatever a caller asks.
const MAX_READ: usize = 1_000;
/// Expired entries one sweep call removes; the reaper calls again while a
/// call removes this many.
const SWEEP_CHUNK: usize = 250;
const MAX_OFFSET: usize = 1_000_000_000;
/// Largest JSON value accepted.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// Numbers up to this magnitude are aggregated (micro-units stay exact in Lua).
const MAX_AGGREGATED: i64 = 9_000_000_000_000_000;

/// A numeric value in micro-units (10^-6), when it is a number in range.
pub fn micro_units(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    let text = n.to_string();
    let d = Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .ok()?;
    // Checked: a number past Decimal's range once scaled is out of range
    // here, not a panic (the fuzzer sent -1.19e24).
    let micro = d
        .round_dp(6)
        .checked_mul(Decimal::from(1_000_000))?
        .to_i64()?;
    (micro.abs() <= MAX_AGGREGATED).then_some(micro)
}

fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::invalid("key", format!("1 to {MAX_KEY_LEN} bytes")));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::invalid("key", "no control characters"));
    }
    Ok(())
}

/// A lock's name: as a key, 1 to 256 bytes without control characters —
/// `job:<id>:merge` and `test:lock:aggregate` as the original's callers
/// named theirs.
fn validate_lock_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_KEY_LEN {
        return Err(Error::invalid("lock", format!("1 to {MAX_KEY_LEN} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("lock", "no control characters"));
    }
    Ok(())
}

/// A validated lock name (see [`Blackboard::lock`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockName(String);

impl LockName {
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        validate_lock_name(&name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for LockName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for LockName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        LockName::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for LockName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LockName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_KEY_LEN,
            "description": "any text without control characters, `:` included",
        })
    }
}

fn parse_value(json: &str) -> Result<Value> {
    serde_json::from_str(json).map_err(|e| Error::Codec(format!("stored value: {e}")))
}

/// A write guarded by a lock: refused once the lock was acquired again.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
pub struct Fence {
    pub lock: LockName,
    pub token: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
}

/// A namespace's aggregates over its numeric values.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Aggregate {
    /// Entries of any kind.
    pub keys: i64,
    /// Numeric entries.
    pub count: i64,
    #[serde(with = "money::exact")]
    pub sum: Decimal,
    pub min: Option<Value>,
    pub max: Option<Value>,
    #[serde(with = "money::exact_opt")]
    pub mean: Option<Decimal>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LockAction {
    /// The default, as in the original.
    #[default]
    Acquire,
    Release,
    Extend,
}

impl LockAction {
    fn as_str(self) -> &'static str {
        match self {
            LockAction::Acquire => "acquire",
            LockAction::Release => "release",
            LockAction::Extend => "extend",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LockOutcome {
    /// Done; the lock's fencing token.
    Ok { fencing_token: i64 },
    /// Someone else holds it.
    Held { holder: String, fencing_token: i64 },
    /// Release or extend by someone who does not hold it.
    NotHolder { holder: Option<String> },
}

/// Result of a compare-and-set.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CasOutcome {
    Set,
    /// The current value (None: absent) differed from the expected one.
    Mismatch {
        current: Option<Value>,
    },
}

/// Score bound of a range query: a number, exclusive or not, or ±infinity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    Unbounded,
    Inclusive(f64),
    Exclusive(f64),
}

impl Bound {
    fn arg(self, low: bool) -> String {
        match self {
            Bound::Unbounded if low => "-inf".into(),
            Bound::Unbounded => "+inf".into(),
            Bound::Inclusive(x) => format!("{x}"),
            Bound::Exclusive(x) => format!("({x}"),
        }
    }

    /// `5`, `(5` (exclusive), `-inf`, `+inf`.
    pub fn parse(field: &str, s: &str) -> Result<Self> {
        match s {
            "-inf" | "+inf" | "inf" => return Ok(Bound::Unbounded),
            _ => {}
        }
        let (exclusive, number) = match s.strip_prefix('(') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let x: f64 = number
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
            .ok_or_else(|| {
                Error::invalid(field, format!("{s:?}: a number, (number, -inf or +inf"))
            })?;
        Ok(if exclusive {
            Bound::Exclusive(x)
        } else {
            Bound::Inclusive(x)
        })
    }
}

/// One namespace of one tenant.
pub struct Blackboard {
    bus: AgentBus,
    tenant: TenantId,
    namespace: Ident,
    keys: BlackboardKeys,
}

impl AgentBus {
    pub fn blackboard(&self, tenant: &TenantId, namespace: &Ident) -> Blackboard {
        Blackboard {
            bus: self.clone(),
            tenant: tenant.clone(),
            namespace: namespace.clone(),
            keys: self.keys(tenant).blackboard(namespace),
        }
    }

    /// Turns the tenant's metered charges into ledger events. Returns the amount.
    pub async fn flush_metering(&self, tenant: &TenantId) -> Result<Decimal> {
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let mut call = scripts().credits_flush.key("credits", keys.credits());
        call.key("outbox", keys.outbox())
            .arg("event_base", event_base())
            .arg("tenant", tenant.as_str());
        // Most passes find nothing metered: signal the sink only when the
        // flush wrote events (one more round trip then).
        call.quiet();
        let minor = call.invoke(&mut conn).await?.value()?;
        if minor > 0 {
            self.signal_outbox(tenant).await?;
        }
        Ok(from_minor(minor))
    }

    /// The tenant's namespaces in name order, at most `most` of them (read
    /// with `SSCAN`, so a large set is never copied whole; past `most`,
    /// which ones is unspecified).
    pub async fn namespaces(&self, tenant: &TenantId, most: usize) -> Result<Vec<String>> {
        let mut conn = self.redis().conn().await?;
        let key = self.keys(tenant).blackboard_names();
        let mut names = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            names.extend(batch);
            cursor = next;
            if cursor == 0 || names.len() >= most {
                break;
            }
        }
        names.sort();
        names.dedup();
        names.truncate(most);
        Ok(names)
    }

    /// The earliest expiry (ms) among the tenant's blackboard entries: one
    /// read per namespace that has entries with a TTL.
    pub async fn next_expiry(&self, tenant: &TenantId) -> Result<Option<i64>> {
        let mut conn = self.redis().conn().await?;
        let namespaces: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys(tenant).blackboard_namespaces())
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        for ns in namespaces {
            if let Ok(ns) = Ident::new("namespace", ns) {
                pipe.cmd("ZRANGE")
                    .arg(&self.blackboard(tenant, &ns).keys.exp)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
            }
        }
        if pipe.is_empty() {
            return Ok(None);
        }
        let firsts: Vec<Vec<(String, f64)>> = pipe.query_async(&mut conn).await?;
        Ok(firsts
            .iter()
            .filter_map(|f| f.first().map(|(_, at)| *at as i64))
            .min())
    }

    /// Sweeps expired entries of every namespace of the tenant (bounded per namespace).
    pub async fn sweep_blackboards(&self, tenant: &TenantId) -> Result<i64> {
        let mut conn = self.redis().conn().await?;
        let namespaces: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys(tenant).blackboard_namespaces())
            .query_async(&mut conn)
            .await?;
        drop(conn);
        let mut removed = 0;
        for ns in namespaces {
            if let Ok(ns) = Ident::new("namespace", ns) {
                let board = self.blackboard(tenant, &ns);
                loop {
                    let n = board.sweep(SWEEP_CHUNK).await?;
                    removed += n;
                    if n < SWEEP_CHUNK as i64 {
                        break;
                    }
                }
            }
        }
        Ok(removed)
    }
}

impl Blackboard {
    /// A call with the blackboard layout (`@layout bb`) pushed.
    fn call<'a>(&self, script: &'a Lua, price: i64) -> Call<'a> {
        let k = &self.keys;
        let mut call = script.call();
        call.key("credits", self.bus.keys(&self.tenant).credits())
            .key("vals", &k.vals)
            .key("nums", &k.nums)
            .key("lex", &k.lex)
            .key("score", &k.score)
            .key("agg", &k.agg)
            .key("exp", &k.exp)
            .key("fence", &k.fence)
            .key("namespaces", &k.namespaces)
            .key("names", &k.names)
            .arg("namespace", self.namespace.as_str())
            .arg("price", price);
        if price > 0 {
            // A metered charge: the reaper turns it into a ledger event.
            call.due(
                self.bus.due_key(Chore::Reap, &self.tenant),
                self.tenant.as_str(),
                crate::due::now_ms(),
            );
        }
        call
    }

    /// Runs one operation's script, timed under `op`.
    async fn run(&self, op: &'static str, call: Call<'_>) -> Result<Answer> {
        let started = std::time::Instant::now();
        let mut conn = self.bus.redis().conn().await?;
        let reply = call.invoke(&mut conn).await?;
        metrics::blackboard_op(op, started.elapsed());
        if reply.is("insufficient") {
            return Err(Error::InsufficientCredits {
                required: from_minor(reply.int("price")?),
                available: from_minor(reply.int("available")?),
            });
        }
        Ok(reply)
    }

    /// A bb_read reply's `values`: text elements, read by position (what
    /// they are depends on the mode; see lua/bb_read.lua).
    fn read_values(reply: &Answer) -> Result<Vec<String>> {
        reply
            .rest("values")?
            .iter()
            .map(|v| {
                crate::codec::text(v).ok_or_else(|| Error::protocol(format!("bb_read value {v:?}")))
            })
            .collect()
    }

    fn entries(reply: &Answer) -> Result<Vec<Entry>> {
        Self::read_values(reply)?
            .chunks(2)
            .map(|pair| match pair {
                [key, json] => Ok(Entry {
                    key: key.clone(),
                    value: parse_value(json)?,
                }),
                _ => Err(Error::protocol("bb_read: a key without its value")),
            })
            .collect()
    }

    pub async fn get(&self, key: &str) -> Result<Option<Value>> {
        validate_key(key)?;
        let mut call = self.call(&scripts().bb_read, self.bus.prices().blackboard_read);
        call.arg("mode", "get").arg("params", key);
        let reply = self.run("get", call).await?;
        let json = Self::read_values(&reply)?
            .into_iter()
            .next()
            .unwrap_or_default();
        if json.is_empty() {
            Ok(None)
        } else {
            parse_value(&json).map(Some)
        }
    }

    async fn write(
        &self,
        mode: &str,
        key: &str,
        value: Option<&Value>,
        ttl: Option<Duration>,
        expected: Option<&Value>,
        fence: Option<&Fence>,
    ) -> Result<Answer> {
        validate_key(key)?;
        let json = match value {
            Some(v) => {
                let json = serde_json::to_string(v).map_err(|e| Error::Codec(e.to_string()))?;
                if json.len() > MAX_VALUE_BYTES {
                    return Err(Error::invalid(
                        "value",
                        format!("larger than {MAX_VALUE_BYTES} bytes"),
                    ));
                }
                json
            }
            None => String::new(),
        };
        let ttl_ms = match ttl {
            Some(t) if t.is_zero() => return Err(Error::invalid("ttl", "must be positive")),
            Some(t) => t.as_millis() as u64,
            None => 0,
        };
        let expected = match expected {
            Some(v) => serde_json::to_string(v).map_err(|e| Error::Codec(e.to_string()))?,
            None => String::new(),
        };
        let mut call = self.call(&scripts().bb_write, self.bus.prices().blackboard_write);
        call.arg("mode", mode)
            .arg("key", key)
            .arg("value", json)
            .arg(
                "micro",
                value
                    .and_then(micro_units)
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )
            .arg("ttl", ttl_ms)
            .arg("expected", expected)
            .arg("fence_lock", fence.map(|f| f.lock.as_str()).unwrap_or(""))
            .arg("fence_token", fence.map(|f| f.token).unwrap_or(0));
        if ttl_ms > 0 {
            // The reaper sweeps the entry when it expires.
            call.due(
                self.bus.due_key(Chore::Reap, &self.tenant),
                self.tenant.as_str(),
                crate::due::now_ms().saturating_add(ttl_ms as i64),
            );
        }
        let op = match mode {
            "set" => "set",
            "cas" => "cas",
            _ => "delete",
        };
        let reply = self.run(op, call).await?;
        if reply.is("fenced") {
            return Err(Error::conflict(
                "stale fencing token: the lock was acquired again since; write refused",
            ));
        }
        Ok(reply)
    }

    /// Sets a value (any JSON), optionally expiring after `ttl`. Returns
    /// whether the key existed.
    pub async fn set(
        &self,
        key: &str,
        value: &Value,
        ttl: Option<Duration>,
        fence: Option<&Fence>,
    ) -> Result<bool> {
        let reply = self
            .write("set", key, Some(value), ttl, None, fence)
            .await?;
        Ok(reply.int("existed")? == 1)
    }

    /// Sets `value` only if the current value equals `expected` (None: absent).
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&Value>,
        value: &Value,
        ttl: Option<Duration>,
        fence: Option<&Fence>,
    ) -> Result<CasOutcome> {
        let reply = self
            .write("cas", key, Some(value), ttl, expected, fence)
            .await?;
        match reply.tag() {
            "ok" => Ok(CasOutcome::Set),
            _ => {
                let current = reply.text("current")?;
                Ok(CasOutcome::Mismatch {
                    current: if current.is_empty() {
                        None
                    } else {
                        Some(parse_value(current)?)
                    },
                })
            }
        }
    }

    /// Deletes an entry. Returns whether it existed.
    pub async fn delete(&self, key: &str, fence: Option<&Fence>) -> Result<bool> {
        let reply = self.write("delete", key, None, None, None, fence).await?;
        Ok(reply.int("existed")? == 1)
    }

    /// Adds `amount` (integer or decimal, exact to 6 places) to a numeric
    /// entry; an absent entry counts as 0. Returns the new value.
    pub async fn increment(
        &self,
        key: &str,
        amount: &Value,
        fence: Option<&Fence>,
    ) -> Result<Value> {
        validate_key(key)?;
        let delta = micro_units(amount).ok_or_else(|| {
            Error::invalid("amount", "a number of at most 9e9 (6 decimal places kept)")
        })?;
        let mut call = self.call(&scripts().bb_increment, self.bus.prices().blackboard_write);
        call.arg("key", key)
            .arg("amount", delta)
            .arg("fence_lock", fence.map(|f| f.lock.as_str()).unwrap_or(""))
            .arg("fence_token", fence.map(|f| f.token).unwrap_or(0));
        let reply = self.run("increment", call).await?;
        match reply.tag() {
            "ok" => parse_value(reply.text("value")?),
            "not_a_number" => Err(Error::conflict(format!(
                "{key} holds a value that is not a number"
            ))),
            "out_of_range" => Err(Error::invalid("amount", "the result would exceed 9e9")),
            "fenced" => Err(Error::conflict(
                "stale fencing token: the lock was acquired again since; write refused",
            )),
            other => Err(Error::protocol(format!("bb_increment answered {other}"))),
        }
    }

    /// Entries in key order after `after` (exclusive): a page.
    pub async fn keys_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Entry>> {
        self.keys_with_prefix(None, after, limit).await
    }

    /// Entries whose key starts with `prefix`, in key order after `after`:
    /// found in the key index (O(log n + page)), never by a scan.
    pub async fn keys_with_prefix(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        if let Some(a) = after {
            validate_key(a)?;
        }
        if let Some(p) = prefix
            && (p.len() > MAX_KEY_LEN || p.chars().any(char::is_control))
        {
            return Err(Error::invalid(
                "prefix",
                format!("at most {MAX_KEY_LEN} bytes, no control characters"),
            ));
        }
        let mut call = self.call(&scripts().bb_read, self.bus.prices().blackboard_read);
        call.arg("mode", "keys")
            .arg("params", after.unwrap_or(""))
            .arg("params", limit.clamp(1, MAX_READ))
            .arg("params", prefix.unwrap_or(""));
        Self::entries(&self.run("keys", call).await?)
    }

    /// Numeric entries with values in `[min, max]`, by value.
    pub async fn range(
        &self,
        min: Bound,
        max: Bound,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let mut call = self.call(&scripts().bb_read, self.bus.prices().blackboard_read);
        call.arg("mode", "range")
            .arg("params", min.arg(true))
            .arg("params", max.arg(false))
            .arg("params", offset.min(MAX_OFFSET))
            .arg("params", limit.clamp(1, MAX_READ));
        Self::entries(&self.run("range", call).await?)
    }

    /// The `k` largest (or smallest) numeric entries.
    pub async fn top(&self, k: usize, descending: bool) -> Result<Vec<Entry>> {
        let mut call = self.call(&scripts().bb_read, self.bus.prices().blackboard_read);
        call.arg("mode", "top")
            .arg("params", k.clamp(1, MAX_READ))
            .arg("params", if descending { "desc" } else { "asc" });
        Self::entries(&self.run("top", call).await?)
    }

    /// Count, sum, min, max and mean of the numeric entries: O(log N).
    pub async fn aggregate(&self) -> Result<Aggregate> {
        let mut call = self.call(&scripts().bb_read, self.bus.prices().blackboard_read);
        call.arg("mode", "aggregate");
        let values = Self::read_values(&self.run("aggregate", call).await?)?;
        // keys, count, sum_micro, min_key, min_json, max_key, max_json, sum_hi
        let [keys, count, lo, _, min, _, max, hi] = values.as_slice() else {
            return Err(Error::protocol("bb_read aggregate: not 8 values"));
        };
        let int = |s: &String| {
            s.parse::<i64>()
                .map_err(|_| Error::protocol(format!("bb_read aggregate: {s:?}")))
        };
        let count = int(count)?;
        // Two fields hold the sum (see lua/include/bb.lua): hi * 10^12 + lo micro-units.
        let micro = i128::from(int(hi)?) * 1_000_000_000_000 + i128::from(int(lo)?);
        let sum = Decimal::try_from_i128_with_scale(micro, 6)
            .map_err(|e| Error::protocol(format!("blackboard sum: {e}")))?
            .normalize();
        let value = |json: &String| -> Result<Option<Value>> {
            if json.is_empty() {
                Ok(None)
            } else {
                parse_value(json).map(Some)
            }
        };
        Ok(Aggregate {
            keys: int(keys)?,
            count,
            sum,
            min: value(min)?,
            max: value(max)?,
            mean: (count > 0).then(|| (sum / Decimal::from(count)).round_dp(6).normalize()),
        })
    }

    /// Acquires, releases or extends a lock. Charged on success.
    pub async fn lock(
        &self,
        name: impl AsRef<str>,
        action: LockAction,
        holder: &Ident,
        ttl: Duration,
    ) -> Result<LockOutcome> {
        let name = name.as_ref();
        validate_lock_name(name)?;
        if ttl.is_zero() || ttl > Duration::from_secs(24 * 3600) {
            return Err(Error::invalid("ttl", "between 1 ms and 24 h"));
        }
        let mut call = self.call(&scripts().bb_lock, self.bus.prices().blackboard_lock);
        call.key("lock", self.keys.lock(name))
            .arg("lock", name)
            .arg("action", action.as_str())
            .arg("holder", holder.as_str())
            .arg("ttl", ttl.as_millis() as u64);
        let r = self.run("lock", call).await?;
        Ok(match r.tag() {
            "ok" => LockOutcome::Ok {
                fencing_token: r.int("token")?,
            },
            "held" => LockOutcome::Held {
                holder: r.text("holder")?.to_string(),
                fencing_token: r.int("token")?,
            },
            _ => LockOutcome::NotHolder {
                holder: Some(r.text("holder")?.to_string()).filter(|h| !h.is_empty()),
            },
        })
    }

    /// Removes up to `limit` expired entries. Returns how many.
    pub async fn sweep(&self, limit: usize) -> Result<i64> {
        let mut call = self.call(&scripts().bb_sweep, 0);
        call.arg("most", limit.clamp(1, MAX_READ));
        // Free of charge, it appends no event: no signal for the sink.
        call.quiet();
        let mut conn = self.bus.redis().conn().await?;
        call.invoke(&mut conn).await?.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_become_exact_micro_units() {
        assert_eq!(micro_units(&json!(1)), Some(1_000_000));
        assert_eq!(micro_units(&json!(0.1)), Some(100_000));
        assert_eq!(micro_units(&json!(-2.5)), Some(-2_500_000));
        assert_eq!(micro_units(&json!(1.0000004)), Some(1_000_000));
        assert_eq!(micro_units(&json!(1e20)), None);
        // Past Decimal's range once scaled by 10^6: refused, not a panic.
        for huge in [-1.1908014246670206e24, 7.9e28, 1e300, -f64::MAX] {
            assert_eq!(micro_units(&json!(huge)), None, "{huge}");
        }
        assert_eq!(micro_units(&json!("1")), None);
        assert_eq!(micro_units(&json!(null)), None);
    }

    #[test]
    fn bounds_parse() {
        assert_eq!(Bound::parse("min", "-inf").unwrap(), Bound::Unbounded);
        assert_eq!(Bound::parse("min", "(2.5").unwrap(), Bound::Exclusive(2.5));
        assert_eq!(Bound::parse("min", "3").unwrap(), Bound::Inclusive(3.0));
        assert!(Bound::parse("min", "x").is_err());
        assert!(Bound::parse("min", "NaN").is_err());
    }
}
