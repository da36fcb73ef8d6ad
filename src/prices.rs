//! The price table: what each skill costs, in minor units.
//!
//! Defaults are the original system's; `AGENTBUS_PRICES` overrides any of
//! them, e.g. `job_item=2.5,agent_invoke=10`.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::money;

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
    pub fn job_reservation(&self, items: usize) -> i64 {
        self.agent_spawn + self.job_item * items as i64
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
        for bad in [
            "job_item",
            "nope=1",
            "job_item=x",
            "job_item=0.001",
            // Once a panic at startup ("Multiplication overflowed").
            "job_item=79228162514264337593543950335",
            "job_item=1e2",
            "job_item=+5",
        ] {
            let err = Prices::parse_overrides(bad).unwrap_err().to_string();
            assert!(err.starts_with("AGENTBUS_PRICES"), "{err}");
        }
    }
}
