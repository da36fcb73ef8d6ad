//! The price table: what each skill costs, in minor units.
//!
//! Defaults are the original system's; `AGENTBUS_PRICES` overrides any of
//! them, e.g. `job_item=2.5,agent_invoke=10`.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::money;

/// Largest invoke price, in minor units: what `invoke_audit.credits_charged`
/// (DECIMAL(12,2)) holds.
pub const MAX_INVOKE_PRICE: i64 = 999_999_999_999;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Prices {
    pub agent_spawn: i64,
    pub agent_invoke: i64,
    pub agent_message: i64,
    pub blackboard_read: i64,
    pub blackboard_write: i64,
    pub blackboard_lock: i64,
    pub job_item: i64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            agent_spawn: 500,
            agent_invoke: 1000,
            agent_message: 200,
            blackboard_read: 100,
            blackboard_write: 100,
            blackboard_lock: 200,
            job_item: 200,
        }
    }
}

impl Prices {
    /// Defaults with the overrides of a `skill=credits,...` list applied.
    pub fn parse_overrides(spec: &str) -> Result<Self> {
        let mut prices = Prices::default();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (skill, amount) = pair.split_once('=').ok_or_else(|| Error::Config {
                var: "AGENTBUS_PRICES".into(),
                reason: format!("expected skill=credits, got {pair:?}"),
            })?;
            let amount = money::parse_credits(amount.trim()).map_err(|e| Error::Config {
                var: "AGENTBUS_PRICES".into(),
                reason: format!("{skill}: {e}"),
            })?;
            let minor = money::to_minor(skill, amount).map_err(|e| Error::Config {
                var: "AGENTBUS_PRICES".into(),
                reason: e.to_string(),
            })?;
            *prices.slot(skill.trim())? = minor;
        }
        // The audit table (the seed's schema) holds an invocation's charge
        // as DECIMAL(12,2): a price past it could never be mirrored.
        if prices.agent_invoke > MAX_INVOKE_PRICE {
            return Err(Error::Config {
                var: "AGENTBUS_PRICES".into(),
                reason: format!(
                    "agent_invoke: at most {} (invoke_audit.credits_charged is DECIMAL(12,2))",
                    money::from_minor(MAX_INVOKE_PRICE)
                ),
            });
        }
        Ok(prices)
    }

    fn slot(&mut self, skill: &str) -> Result<&mut i64> {
        Ok(match skill {
            "agent_spawn" => &mut self.agent_spawn,
            "agent_invoke" => &mut self.agent_invoke,
            "agent_message" => &mut self.agent_message,
            "blackboard_read" => &mut self.blackboard_read,
            "blackboard_write" => &mut self.blackboard_write,
            "blackboard_lock" => &mut self.blackboard_lock,
            "job_item" => &mut self.job_item,
            other => {
                return Err(Error::Config {
                    var: "AGENTBUS_PRICES".into(),
                    reason: format!("unknown skill {other:?}"),
                });
            }
        })
    }

    /// Credits a job of `items` items reserves at spawn: overhead plus every item.
    pub fn job_reservation(&self, items: usize) -> rust_decimal::Decimal {
        money::from_minor(self.agent_spawn)
            + money::from_minor(self.job_item) * rust_decimal::Decimal::from(items)
    }

    /// The same in minor units, when a balance could ever hold it
    /// (at most [`money::MAX_MINOR`]): what the spawn script may add up.
    pub fn job_reservation_minor(&self, items: usize) -> Option<i64> {
        let items = i64::try_from(items).ok()?;
        self.job_item
            .checked_mul(items)?
            .checked_add(self.agent_spawn)
            .filter(|&m| m <= money::MAX_MINOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_bad_ones_name_the_variable() {
        let p = Prices::parse_overrides("job_item=2.5, agent_invoke=10").unwrap();
        assert_eq!(p.job_item, 250);
        assert_eq!(p.agent_invoke, 1000);
        assert_eq!(p.agent_spawn, 500);
        assert_eq!(p.job_reservation_minor(3), Some(500 + 3 * 250));
        let top = Prices::parse_overrides("agent_invoke=9999999999.99").unwrap();
        assert_eq!(top.agent_invoke, MAX_INVOKE_PRICE);
        assert_eq!(p.job_reservation(3).to_string(), "12.50");
        let dear = Prices::parse_overrides("job_item=10000000000000").unwrap();
        assert_eq!(dear.job_reservation_minor(1), None);
        assert_eq!(dear.job_reservation_minor(usize::MAX), None);
        assert_eq!(dear.job_reservation(2).to_string(), "20000000000005.00");
        for bad in [
            "job_item",
            "nope=1",
            "job_item=x",
            "job_item=0.001",
            // Once a panic at startup ("Multiplication overflowed").
            "job_item=79228162514264337593543950335",
            "job_item=1e2",
            "job_item=+5",
            "agent_invoke=10000000000",
        ] {
            let err = Prices::parse_overrides(bad).unwrap_err().to_string();
            assert!(err.starts_with("AGENTBUS_PRICES"), "{err}");
        }
    }
}
