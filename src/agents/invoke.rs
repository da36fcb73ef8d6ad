//! Invoke: one agent calls another and waits for the answer, with a timeout
//! and an audit trail.
//!
//! `invoke_start.lua` checks the target (registered, not stale), reserves the
//! `agent_invoke` price, records the invocation as pending (audit event) and
//! puts an `invoke_request` in the target's inbox naming the caller's reply
//! stream. `invoke_respond.lua` ends it (charge on success, release on error)
//! and posts the reply; the caller's reply reader hands it over. A caller
//! that gives up, or the sweeper after the deadline, ends it as `timeout`
//! (`invoke_expire.lua`), after which a late response is refused.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bus::{AgentBus, event_base};
use crate::error::{Error, Result};
use crate::keys::{self, Chore, Ident, TenantId, TenantKeys};
use crate::metrics;
use crate::money::{Credits, from_minor};
use crate::payload::{self, Encode, Payload};
use crate::scripts::{Call, Lua, scripts};
use crate::text;

pub const TIMEOUT_SECS: (i64, i64) = (1, 300);
/// Longest error message a target may answer with.
pub const MAX_ERROR_BYTES: usize = 4096;

fn default_timeout() -> i64 {
    30
}

/// The body of `POST /invocations`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    pub caller_instance_id: Ident,
    pub target_instance_id: Ident,
    #[serde(default)]
    pub request_payload: Payload,
    #[serde(default = "default_timeout")]
    #[schemars(range(min = TIMEOUT_SECS.0, max = TIMEOUT_SECS.1))]
    pub timeout_seconds: i64,
    #[serde(default)]
    pub job_id: Option<Uuid>,
}

impl InvokeRequest {
    pub fn new(caller: &Ident, target: &Ident, payload: impl Into<Payload>) -> Self {
        Self {
            caller_instance_id: caller.clone(),
            target_instance_id: target.clone(),
            request_payload: payload.into(),
            timeout_seconds: default_timeout(),
            job_id: None,
        }
    }
}

/// What the caller gets back (the original's fields).
#[derive(Clone, Debug, Serialize)]
pub struct InvokeResult {
    pub success: bool,
    pub invoke_id: String,
    pub response_payload: Option<Payload>,
    pub error: Option<String>,
    pub timeout: bool,
    pub latency_ms: u64,
}

/// An invocation's full trace.
#[derive(Clone, Debug, Serialize)]
pub struct Invocation {
    pub invoke_id: String,
    pub caller_instance_id: String,
    pub target_instance_id: String,
    pub job_id: Option<Uuid>,
    pub request_payload: Payload,
    pub response_payload: Option<Payload>,
    pub status: String,
    pub credits_charged: Option<Credits>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub error_message: Option<String>,
    /// Why a stored payload could not be decoded (that payload reads as null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

impl Invocation {
    fn from_hash(invoke_id: &str, h: &HashMap<String, Vec<u8>>) -> Result<Self> {
        let text = |k: &str| h.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
        let int = |k: &str| text(k).and_then(|v| v.parse::<i64>().ok());
        let mut undecodable = None;
        let mut payload = |k: &str| -> Option<Payload> {
            let bytes = h.get(k).filter(|v| !v.is_empty())?;
            let (p, why) = payload::from_stored(Some(bytes), "invocation");
            undecodable = undecodable.take().or(why.map(|w| format!("{k}: {w}")));
            Some(p)
        };
        let request_payload = payload("request").unwrap_or_default();
        let response_payload = payload("response");
        let status = text("status").unwrap_or_default();
        Ok(Invocation {
            invoke_id: invoke_id.to_string(),
            caller_instance_id: text("caller").unwrap_or_default(),
            target_instance_id: text("target").unwrap_or_default(),
            job_id: text("job").and_then(|j| Uuid::parse_str(&j).ok()),
            request_payload,
            response_payload,
            undecodable,
            credits_charged: int("credits_charged").map(Credits::from_minor),
            started_at: int("started_at").and_then(DateTime::from_timestamp_millis),
            completed_at: int("completed_at").and_then(DateTime::from_timestamp_millis),
            duration_ms: int("duration_ms"),
            error_message: text("error").filter(|e| !e.is_empty()),
            status,
        })
    }
}

/// `inv_` + 16 hex digits.
pub fn new_invoke_id() -> String {
    format!("inv_{}", hex::encode(rand::rng().random::<[u8; 8]>()))
}

/// An invocation refused before it started: audited as failed under its id.
fn refused(invoke_id: &str, reason: &'static str, source: Error) -> Error {
    metrics::invoke_refused();
    Error::InvokeRefused {
        invoke_id: invoke_id.to_string(),
        reason,
        source: Box::new(source),
    }
}

/// A call of an invoke script with its shared layout (`@layout invoke`) pushed.
fn invoke_call<'a>(
    script: &'a Lua,
    keys: &TenantKeys,
    tenant: &TenantId,
    invoke_id: &str,
) -> Call<'a> {
    let mut call = script.call();
    call.key("credits", keys.credits())
        .key("outbox", keys.outbox())
        .key("invoke", keys.invoke(invoke_id))
        .key("pending", keys.pending_invokes())
        .arg("event_base", event_base())
        .arg("tenant", tenant.as_str())
        .arg("invoke_id", invoke_id);
    call
}

pub fn validate_invoke_id(id: &str) -> Result<()> {
    let ok = id
        .strip_prefix("inv_")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invoke_id",
            format!("{id:?} is not inv_ + 16 hex digits"),
        ))
    }
}

impl AgentBus {
    /// Invokes `target` and waits for its response up to the timeout.
    /// An unknown or stale target is an error and reserves nothing.
    #[tracing::instrument(name = "invoke", skip_all, fields(tenant = %tenant, caller = %req.caller_instance_id, target = %req.target_instance_id))]
    pub async fn invoke(&self, tenant: &TenantId, req: &InvokeRequest) -> Result<InvokeResult> {
        if req.timeout_seconds < TIMEOUT_SECS.0 || req.timeout_seconds > TIMEOUT_SECS.1 {
            return Err(Error::invalid(
                "timeout_seconds",
                format!("must be between {} and {}", TIMEOUT_SECS.0, TIMEOUT_SECS.1),
            ));
        }
        req.request_payload.check_mirrorable("request_payload")?;
        let request = req
            .request_payload
            .encode_checked("request_payload", self.limits().max_payload_bytes)?;
        let invoke_id = new_invoke_id();
        let timeout = Duration::from_secs(req.timeout_seconds as u64);
        let started = Instant::now();
        let waiter = self.expect_reply(tenant, &invoke_id);
        let keys = self.keys(tenant);
        let limits = self.limits();
        let mut conn = self.redis().conn().await?;
        let reply = invoke_call(&scripts().invoke_start, &keys, tenant, &invoke_id)
            .key("agents", keys.agents())
            .key("target", keys.agent(&req.target_instance_id))
            .key("target_inbox", keys.inbox(&req.target_instance_id))
            .arg("price", self.prices().agent_invoke)
            .arg("inbox_cap", limits.inbox_cap)
            .arg("message_id", Uuid::new_v4().to_string())
            .arg("caller", req.caller_instance_id.as_str())
            .arg("target", req.target_instance_id.as_str())
            .arg("job", req.job_id.map(|j| j.to_string()).unwrap_or_default())
            .arg("request", request)
            .arg("timeout", timeout.as_millis() as u64)
            .arg("reply_stream", self.reply_stream(tenant))
            .arg("staleness", limits.stale_after.as_millis() as u64)
            .arg("retention", limits.invoke_retention.as_secs().max(1))
            // If the caller stops waiting, the reaper ends it at its deadline.
            .due(
                self.due_key(Chore::Reap, tenant),
                tenant.as_str(),
                Utc::now().timestamp_millis() + timeout.as_millis() as i64 + 1,
            )
            .invoke(&mut conn)
            .await?;
        drop(conn);
        match reply.tag() {
            "ok" => {}
            "unknown_target" => {
                return Err(refused(
                    &invoke_id,
                    "unknown_target",
                    Error::not_found(format!("target instance {}", req.target_instance_id)),
                ));
            }
            "target_stopped" => {
                return Err(refused(
                    &invoke_id,
                    "target_stopped",
                    Error::conflict(format!(
                        "target instance {} is {} (not running or idle)",
                        req.target_instance_id,
                        reply.text("status").unwrap_or("stale")
                    )),
                ));
            }
            "insufficient_credits" => {
                return Err(refused(
                    &invoke_id,
                    "insufficient_credits",
                    Error::InsufficientCredits {
                        required: from_minor(reply.int("required")?),
                        available: from_minor(reply.int("available")?),
                    },
                ));
            }
            other => return Err(Error::protocol(format!("invoke_start answered {other}"))),
        }

        let answer = waiter.wait(timeout).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        if let Some(entry) = answer {
            let status = entry.text("status").unwrap_or_default().to_string();
            let (payload, undecodable) = payload::from_stored(entry.get("payload"), "response");
            // A response that cannot be decoded reads as null, and says why.
            let error = entry
                .text("error")
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .or_else(|| undecodable.map(|why| format!("undecodable response payload: {why}")));
            let outcome = if status == "completed" {
                "success"
            } else {
                "failure"
            };
            metrics::invoke(outcome, started.elapsed());
            return Ok(InvokeResult {
                success: status == "completed",
                invoke_id,
                response_payload: (status == "completed").then_some(payload),
                error,
                timeout: false,
                latency_ms,
            });
        }
        // Our timer fired: end it as timed out, unless a response won the race.
        match self.expire_invoke(tenant, &invoke_id, true).await? {
            Some(_) => {
                metrics::invoke("timeout", started.elapsed());
                Ok(InvokeResult {
                    success: false,
                    invoke_id,
                    response_payload: None,
                    error: Some(format!("no response within {}s", req.timeout_seconds)),
                    timeout: true,
                    latency_ms,
                })
            }
            None => {
                let inv = self.invocation(tenant, &invoke_id).await?;
                Ok(InvokeResult {
                    success: inv.status == "completed",
                    invoke_id,
                    response_payload: inv.response_payload,
                    error: inv.error_message,
                    timeout: inv.status == "timeout",
                    latency_ms,
                })
            }
        }
    }

    /// Ends a pending invocation as timed out (`force`: without waiting for
    /// its deadline). `Some(duration_ms)` when this call ended it.
    pub async fn expire_invoke(
        &self,
        tenant: &TenantId,
        invoke_id: &str,
        force: bool,
    ) -> Result<Option<i64>> {
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let reply = invoke_call(&scripts().invoke_expire, &keys, tenant, invoke_id)
            .arg("own_timer", if force { "1" } else { "0" })
            .invoke(&mut conn)
            .await?;
        match reply.tag() {
            "timeout" => Ok(Some(reply.int("duration_ms")?)),
            _ => Ok(None),
        }
    }

    /// The target answers: a response, or an error (`failed`). Refused once
    /// the invocation is no longer pending (timed out, or answered).
    pub async fn respond(
        &self,
        tenant: &TenantId,
        invoke_id: &str,
        response: &impl Encode,
        error: Option<&str>,
        responder: Option<&Ident>,
    ) -> Result<(String, i64)> {
        validate_invoke_id(invoke_id)?;
        response.check_mirrorable("response_payload")?;
        let response =
            response.encode_checked("response_payload", self.limits().max_payload_bytes)?;
        if let Some(e) = error {
            text::check("error", e, MAX_ERROR_BYTES)?;
        }
        let keys = self.keys(tenant);
        let mut conn = self.redis().conn().await?;
        let reply = invoke_call(&scripts().invoke_respond, &keys, tenant, invoke_id)
            .arg("response", response)
            .arg("error", error.unwrap_or(""))
            .arg("responder", responder.map(Ident::as_str).unwrap_or(""))
            .invoke(&mut conn)
            .await?;
        match reply.tag() {
            "ok" => Ok((reply.text("status")?.to_string(), reply.int("duration_ms")?)),
            "missing" => Err(Error::not_found(format!("invocation {invoke_id}"))),
            "not_pending" => Err(Error::conflict_with(
                format!(
                    "invocation {invoke_id} is {}: response refused",
                    reply.text("status")?
                ),
                &serde_json::json!({ "status": reply.text("status")? }),
            )),
            "wrong_responder" => Err(Error::Forbidden("only the target may respond")),
            other => Err(Error::protocol(format!("invoke_respond answered {other}"))),
        }
    }

    /// The live state of an invocation (while Redis keeps it).
    pub async fn invocation(&self, tenant: &TenantId, invoke_id: &str) -> Result<Invocation> {
        validate_invoke_id(invoke_id)?;
        let mut conn = self.redis().conn().await?;
        let h: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys(tenant).invoke(invoke_id))
            .query_async(&mut conn)
            .await?;
        if h.is_empty() {
            return Err(Error::not_found(format!("invocation {invoke_id}")));
        }
        Invocation::from_hash(invoke_id, &h)
    }

    /// The earliest deadline of the tenant's pending invocations (ms).
    pub async fn next_invoke_deadline(&self, tenant: &TenantId) -> Result<Option<i64>> {
        let mut conn = self.redis().conn().await?;
        let first: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.keys(tenant).pending_invokes())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(first.first().map(|(_, at)| *at as i64))
    }

    /// Ends every invocation of `tenant` past its deadline (the caller is
    /// gone). Returns how many.
    pub async fn expire_due_invokes(&self, tenant: &TenantId) -> Result<usize> {
        let mut conn = self.redis().conn().await?;
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys(tenant).pending_invokes())
            .arg("-inf")
            .arg(Utc::now().timestamp_millis())
            .arg("LIMIT")
            .arg(0)
            .arg(500)
            .query_async(&mut conn)
            .await?;
        drop(conn);
        let mut expired = 0;
        for id in due {
            if keys::validate_id("invoke_id", &id, 64).is_ok()
                && let Some(lasted) = self.expire_invoke(tenant, &id, false).await?
            {
                // The caller is gone: the sweeper counts its timeout.
                metrics::invoke("timeout", Duration::from_millis(lasted.max(0) as u64));
                expired += 1;
            }
        }
        Ok(expired)
    }
}

/// What an invocation handler answers (see [`AgentBus::serve_invocations`]).
#[derive(Clone, Debug)]
pub enum Answer {
    /// Success: this response (`json!(…).into()`, or a payload as received),
    /// charged to the caller.
    Response(Payload),
    /// The target reports an error: the invocation ends `failed`, nothing charged.
    Error(String),
    /// No answer: the invocation times out (and its reservation is released).
    Silence,
}

impl AgentBus {
    /// Answers the invocations that reach `instance`'s inbox with `handler`
    /// (the request's payload in, an [`Answer`] out) until `shutdown`: the
    /// counterpart of [`crate::jobs::worker::Worker`] for invocations. Other
    /// messages are acknowledged and skipped; an answer that comes too late
    /// (the invocation timed out) is dropped, not retried.
    pub async fn serve_invocations<H, F>(
        &self,
        tenant: &TenantId,
        instance: &Ident,
        shutdown: tokio_util::sync::CancellationToken,
        handler: H,
    ) -> Result<()>
    where
        H: Fn(Payload) -> F,
        F: std::future::Future<Output = Answer>,
    {
        let rx = self.receiver(tenant, instance);
        rx.run(shutdown, |m| {
            let answered = m.invoke_id.map(|id| (id, handler(m.payload)));
            async move {
                let Some((id, answer)) = answered else {
                    return Ok(());
                };
                let (response, error) = match answer.await {
                    Answer::Response(p) => (p, None),
                    Answer::Error(e) => (Payload::null(), Some(e)),
                    Answer::Silence => return Ok(()),
                };
                match self
                    .respond(tenant, &id, &response, error.as_deref(), Some(instance))
                    .await
                {
                    Ok(_) | Err(Error::Conflict { .. } | Error::NotFound(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }
}
