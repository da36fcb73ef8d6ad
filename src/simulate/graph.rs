//! Stage graphs: their caps, checked before anything is built, and an
//! order in which each stage follows those it depends on.

use crate::bus::AgentBus;
use crate::error::{Error, Result};
use crate::money::Credits;

use super::history::Estimate;
use super::{StageSpec, cost_breakdown};

/// The name by which stages depend on the job itself.
pub(super) const JOB_STAGE: &str = "job";
/// Most stages one simulation may add to its job.
pub const MAX_STAGES: usize = 200;
/// Most stages one stage may depend on (fan-in).
pub const MAX_DEPENDS_ON: usize = 32;
/// Most stages that may depend on one stage (fan-out).
pub const MAX_FAN_OUT: usize = 32;

/// The caps on a stage graph's size, checked before anything is built for it.
pub(super) fn check_stage_shape(stages: &[StageSpec]) -> Result<()> {
    if stages.len() > MAX_STAGES {
        return Err(Error::invalid(
            "stages",
            format!("at most {MAX_STAGES} stages ({} given)", stages.len()),
        ));
    }
    for (i, s) in stages.iter().enumerate() {
        if s.depends_on.len() > MAX_DEPENDS_ON {
            return Err(Error::invalid(
                format!("stages[{i}].depends_on"),
                format!("at most {MAX_DEPENDS_ON} stages"),
            ));
        }
    }
    Ok(())
}

/// One stage of the graph, estimated.
pub(super) struct Node {
    pub(super) items: usize,
    pub(super) credits: Credits,
    pub(super) p50: f64,
    pub(super) p95: f64,
    /// Chance it finishes without an item failing for good.
    pub(super) success: f64,
}

impl Node {
    pub(super) fn new(bus: &AgentBus, items: usize, e: &Estimate) -> Self {
        Node {
            items,
            credits: cost_breakdown(bus, items).total,
            p50: e.p50_s,
            p95: e.p95_s,
            success: (1.0 - e.permanent_failure).powf(items as f64),
        }
    }
}

/// Nodes ordered so each comes after those it depends on (Kahn's algorithm:
/// a loop, never recursion, whatever the depth). On a cycle, the error holds
/// the cycle's nodes in order.
pub(super) fn topological_order(
    deps: &[Vec<usize>],
) -> std::result::Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (node, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(node);
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(node) = ready.pop_front() {
        order.push(node);
        for &next in &dependents[node] {
            waiting[next] -= 1;
            if waiting[next] == 0 {
                ready.push_back(next);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every node left waits on another one left: walk back until a node repeats.
    let mut seen = vec![usize::MAX; n];
    let mut walk = Vec::new();
    let mut at = (0..n).find(|&i| waiting[i] > 0).unwrap_or(0);
    while seen[at] == usize::MAX {
        seen[at] = walk.len();
        walk.push(at);
        at = deps[at]
            .iter()
            .copied()
            .find(|&d| waiting[d] > 0)
            .unwrap_or(at);
    }
    let mut cycle: Vec<usize> = walk[seen[at]..].to_vec();
    cycle.push(cycle[0]);
    Err(cycle)
}
