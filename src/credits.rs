//! Credit balances per tenant: grant, reserve, spend, refund, charge.
//!
//! The balance lives in the hash `ab:{t}:credits` as integer minor units;
//! every movement is one call of `lua/credits_move.lua`, which checks the
//! balance, moves the amount and appends the ledger event to the outbox.

use serde::Serialize;
use uuid::Uuid;

use crate::bus::{AgentBus, event_base};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::TenantId;
use crate::money::{self, Credits, from_minor};
use crate::scripts::scripts;

/// A tenant's credits. `available = total - reserved - spent`, never negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Balance {
    pub total: Credits,
    pub reserved: Credits,
    pub spent: Credits,
    pub available: Credits,
}

impl Balance {
    /// A balance from its three figures; `available` follows from them.
    pub fn new(total: Credits, reserved: Credits, spent: Credits) -> Self {
        Self {
            total,
            reserved,
            spent,
            available: total - reserved - spent,
        }
    }

    pub fn from_minor(total: i64, reserved: i64, spent: i64) -> Self {
        Self::new(
            Credits::from_minor(total),
            Credits::from_minor(reserved),
            Credits::from_minor(spent),
        )
    }
}

/// The kinds of credit movement, as they appear in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditOp {
    /// Adds to `total`.
    Grant,
    /// Sets credits aside for work that is about to happen.
    Reserve,
    /// Turns reserved credits into spent ones.
    Spend,
    /// Releases reserved credits unused.
    Refund,
    /// Spends directly, without a reservation.
    Charge,
}

impl CreditOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CreditOp::Grant => "grant",
            CreditOp::Reserve => "reserve",
            CreditOp::Spend => "spend",
            CreditOp::Refund => "refund",
            CreditOp::Charge => "charge",
        }
    }
}

/// Longest reason a grant may carry.
pub const MAX_REASON_BYTES: usize = 1024;

/// The ledger context of a grant: its reason (checked as free text bound for
/// the mirror) and who granted it.
pub fn grant_context(reason: &str, by: &str) -> Result<serde_json::Value> {
    crate::text::check("reason", reason, MAX_REASON_BYTES)?;
    Ok(serde_json::json!({ "reason": reason, "by": by }))
}

impl AgentBus {
    /// The tenant's current balance (zero for a tenant never granted anything).
    pub async fn balance(&self, tenant: &TenantId) -> Result<Balance> {
        let mut conn = self.redis().conn().await?;
        let (total, reserved, spent): (Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.keys(tenant).credits())
            .arg("total")
            .arg("reserved")
            .arg("spent")
            .query_async(&mut conn)
            .await?;
        Ok(Balance::from_minor(
            total.unwrap_or(0),
            reserved.unwrap_or(0),
            spent.unwrap_or(0),
        ))
    }

    /// Adds credits to a tenant (admin operation).
    pub async fn grant_credits(
        &self,
        tenant: &TenantId,
        amount: impl Into<Credits>,
        context: serde_json::Value,
    ) -> Result<Balance> {
        let minor = amount.into().to_minor("amount")?;
        if minor == 0 {
            return Err(Error::invalid("amount", "must be greater than zero"));
        }
        self.register_tenant(tenant).await?;
        self.move_credits(tenant, CreditOp::Grant, "grant", minor, None, context)
            .await
    }

    /// One credit movement of `minor` units with its ledger event. Fails with
    /// `InsufficientCredits` (and changes nothing) when it does not fit.
    pub async fn move_credits(
        &self,
        tenant: &TenantId,
        op: CreditOp,
        skill: &str,
        minor: i64,
        job: Option<Uuid>,
        context: serde_json::Value,
    ) -> Result<Balance> {
        if minor <= 0 || minor > money::MAX_MINOR {
            return Err(Error::invalid(
                "amount",
                format!(
                    "must be greater than zero and at most {}",
                    money::from_minor(money::MAX_MINOR)
                ),
            ));
        }
        crate::text::check_value("context", &context)?;
        let keys = self.keys(tenant);
        let context = match context {
            serde_json::Value::Object(_) => context,
            serde_json::Value::Null => serde_json::json!({}),
            other => serde_json::json!({ "value": other }),
        };
        let mut conn = self.redis().conn().await?;
        let reply = scripts()
            .credits_move
            .key("credits", keys.credits())
            .key("outbox", keys.outbox())
            .arg("event_base", event_base())
            .arg("tenant", tenant.as_str())
            .arg("operation", op.as_str())
            .arg("skill", skill)
            .arg("amount", minor)
            .arg("job", job.map(|j| j.to_string()).unwrap_or_default())
            .arg("context", codec::encode(&context)?)
            .arg("ceiling", money::MAX_MINOR)
            .invoke(&mut conn)
            .await?;
        match reply.tag() {
            "ok" => Ok(Balance::from_minor(
                reply.int("total")?,
                reply.int("reserved")?,
                reply.int("spent")?,
            )),
            "insufficient" => Err(Error::InsufficientCredits {
                required: from_minor(reply.int("required")?),
                available: from_minor(reply.int("available")?),
            }),
            "over_reserved" => Err(Error::conflict(format!(
                "cannot {} {}: only {} reserved",
                op.as_str(),
                from_minor(reply.int("required")?),
                from_minor(reply.int("reserved")?)
            ))),
            "over_ceiling" => Err(Error::invalid(
                "amount",
                format!(
                    "balance would exceed the ceiling of {}",
                    from_minor(money::MAX_MINOR)
                ),
            )),
            other => Err(Error::protocol(format!("credits_move answered {other}"))),
        }
    }
}
