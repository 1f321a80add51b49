//! Nodes of a partition and the power plan for one scaling command. Pure:
//! the actuator feeds it what `sinfo --json` printed.

use super::SlurmError;
use serde::Deserialize;
use std::collections::BTreeSet;

/// One node of `sinfo --json` (Slurm 22.05), the fields the plan needs.
#[derive(Debug, Clone, Deserialize)]
pub struct SinfoNode {
    pub name: String,
    /// Base state: idle, allocated, mixed, down, future, unknown…
    pub state: String,
    /// CLOUD, POWERED_DOWN, POWERING_UP, POWER_DOWN, POWERING_DOWN, DRAIN…
    #[serde(default)]
    pub state_flags: Vec<String>,
    pub cpus: i64,
    #[serde(default)]
    pub alloc_cpus: i64,
    #[serde(default)]
    pub partitions: Vec<String>,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize)]
struct SinfoOutput {
    #[serde(default)]
    nodes: Vec<SinfoNode>,
}

pub fn parse_sinfo(text: &str) -> Result<Vec<SinfoNode>, SlurmError> {
    let out: SinfoOutput = serde_json::from_str(text).map_err(|e| {
        SlurmError::transient(format!("sinfo --json: not the 22.05 node view: {e}"))
    })?;
    Ok(out.nodes)
}

/// Where a node is in its power life, as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Not a power-saving node: always on, counted, never touched.
    Static,
    /// Powered down and usable: may be powered up.
    Off,
    /// ResumeProgram running (a VM booting): counted as capacity.
    Booting,
    /// Up and idle: counted; may be powered down.
    Idle,
    /// Up with jobs: counted; never powered down by prescale.
    Busy,
    /// Asked to power down (draining or powering down): not counted.
    GoingOff,
    /// DOWN, DRAINED or FAILED (e.g. a boot that never finished): not
    /// counted, not touched, reported.
    Unusable,
}

fn has(n: &SinfoNode, flag: &str) -> bool {
    n.state_flags.iter().any(|f| f == flag)
}

impl SinfoNode {
    pub fn power(&self) -> Power {
        let state = self.state.to_ascii_lowercase();
        let broken = matches!(state.as_str(), "down" | "error" | "future" | "unknown")
            || has(self, "DRAIN")
            || has(self, "FAIL")
            || has(self, "NOT_RESPONDING") && !has(self, "POWERING_UP") && !has(self, "POWER_UP");
        if broken {
            return Power::Unusable;
        }
        let power_flags = ["CLOUD", "POWERED_DOWN", "POWERING_UP", "POWER_UP"];
        if !power_flags.iter().any(|f| has(self, f)) {
            return Power::Static;
        }
        if has(self, "POWERING_DOWN") || has(self, "POWER_DOWN") {
            return Power::GoingOff;
        }
        // POWER_UP: asked to power up, ResumeProgram not yet run.
        if has(self, "POWERING_UP") || has(self, "POWER_UP") {
            return Power::Booting;
        }
        if has(self, "POWERED_DOWN") {
            return Power::Off;
        }
        if self.alloc_cpus > 0 || matches!(state.as_str(), "allocated" | "mixed" | "completing") {
            Power::Busy
        } else {
            Power::Idle
        }
    }
}

/// One change to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// `scontrol update NodeName=<n> State=POWER_UP`
    PowerUp(String),
    /// `scontrol update NodeName=<n> State=POWER_DOWN_ASAP` (idle nodes
    /// only; ASAP, not FORCE, so a job that lands meanwhile finishes).
    PowerDown(String),
}

impl NodeAction {
    pub fn scontrol_args(&self) -> Vec<String> {
        let (n, s) = match self {
            NodeAction::PowerUp(n) => (n, "POWER_UP"),
            NodeAction::PowerDown(n) => (n, "POWER_DOWN_ASAP"),
        };
        vec![
            "update".into(),
            format!("NodeName={n}"),
            format!("State={s}"),
        ]
    }
}

/// The plan for one partition: what to change, and what to report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<NodeAction>,
    /// vCPUs counted as powered (on, booting, static) before the actions.
    pub powered_vcpus: i64,
    /// vCPUs powered once the actions are done.
    pub target_vcpus: i64,
    /// Nodes that are DOWN / drained / failed (a boot that never finished).
    pub unusable: Vec<(String, String)>,
    /// Desired capacity that no usable node was left to provide.
    pub shortfall_vcpus: i64,
}

/// Bring the powered vCPUs of `nodes` (those of one managed partition) to
/// the command's desired capacity, within `[min, max]` (`max` 0: no
/// ceiling): power up Off nodes (in name order) until powered ≥ desired
/// without passing max; power down Idle nodes (last name first) while
/// what stays powered is still ≥ desired and ≥ min. Busy, booting,
/// unusable and static nodes are never touched, nor idle nodes in
/// `recently_busy` (idle for less than the actuator's grace: the node
/// Slurm's own `SuspendTime` would still keep for the next job).
pub fn plan(
    nodes: &[SinfoNode],
    min: i64,
    desired: i64,
    max: i64,
    recently_busy: &BTreeSet<String>,
) -> Plan {
    let ceiling = if max > 0 { max } else { i64::MAX };
    let want = desired.max(min).min(ceiling);
    let mut sorted: Vec<&SinfoNode> = nodes.iter().collect();
    sorted.sort_by_key(|n| natural_key(&n.name));
    let mut p = Plan::default();
    for n in &sorted {
        match n.power() {
            Power::Static | Power::Booting | Power::Idle | Power::Busy => p.powered_vcpus += n.cpus,
            Power::Unusable => p.unusable.push((n.name.clone(), n.reason.clone())),
            Power::Off | Power::GoingOff => {}
        }
    }
    let mut powered = p.powered_vcpus;
    if powered < want {
        for n in sorted.iter().filter(|n| n.power() == Power::Off) {
            if powered >= want {
                break;
            }
            if powered + n.cpus > ceiling {
                continue;
            }
            powered += n.cpus;
            p.actions.push(NodeAction::PowerUp(n.name.clone()));
        }
        p.shortfall_vcpus = (want - powered).max(0);
    } else {
        let idle = |n: &&&SinfoNode| n.power() == Power::Idle && !recently_busy.contains(&n.name);
        for n in sorted.iter().rev().filter(idle) {
            if powered - n.cpus < want {
                continue;
            }
            powered -= n.cpus;
            p.actions.push(NodeAction::PowerDown(n.name.clone()));
        }
    }
    p.target_vcpus = powered;
    p
}

/// "cloud10" sorts after "cloud9".
fn natural_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, num) = name.split_at(name.len() - digits);
    (stem.to_string(), num.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, state: &str, flags: &[&str], alloc: i64) -> SinfoNode {
        SinfoNode {
            name: name.into(),
            state: state.into(),
            state_flags: flags.iter().map(|s| s.to_string()).collect(),
            cpus: 2,
            alloc_cpus: alloc,
            partitions: vec!["cloud".into()],
            reason: String::new(),
        }
    }

    fn cluster() -> Vec<SinfoNode> {
        vec![
            node("cloud1", "allocated", &["CLOUD"], 2),
            node("cloud2", "idle", &["CLOUD"], 0),
            node("cloud3", "idle", &["CLOUD", "POWERED_DOWN"], 0),
            node("cloud4", "down", &["CLOUD", "POWERED_DOWN"], 0),
            node("cloud10", "idle", &["CLOUD", "POWERED_DOWN"], 0),
            node("cloud5", "idle", &["CLOUD", "POWERING_UP"], 0),
        ]
    }

    #[test]
    fn powers_up_to_desired_skipping_unusable_nodes() {
        let p = plan(&cluster(), 0, 10, 0, &none());
        assert_eq!(p.powered_vcpus, 6);
        assert_eq!(
            p.actions,
            [
                NodeAction::PowerUp("cloud3".into()),
                NodeAction::PowerUp("cloud10".into())
            ]
        );
        assert_eq!(p.unusable.len(), 1);
        assert_eq!((p.target_vcpus, p.shortfall_vcpus), (10, 0));
        // Never above max: 8 allows one more node only.
        let p = plan(&cluster(), 0, 10, 8, &none());
        assert_eq!(p.actions, [NodeAction::PowerUp("cloud3".into())]);
        assert_eq!(p.shortfall_vcpus, 0);
        let p = plan(&cluster(), 0, 20, 0, &none());
        assert_eq!(p.shortfall_vcpus, 10);
    }

    #[test]
    fn powers_down_idle_only_never_below_min() {
        let p = plan(&cluster(), 0, 0, 0, &none());
        // cloud2 is the only idle node; busy cloud1 and booting cloud5 stay.
        assert_eq!(p.actions, [NodeAction::PowerDown("cloud2".into())]);
        let p = plan(&cluster(), 6, 0, 0, &none());
        assert!(p.actions.is_empty());
        // Desired 5 with nodes of 2 vCPUs: keep 6 powered (never below desired).
        let p = plan(&cluster(), 0, 5, 0, &none());
        assert!(p.actions.is_empty());
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn idle_nodes_within_the_grace_stay_powered() {
        let recent: BTreeSet<String> = ["cloud2".to_string()].into();
        // cloud2 is idle but was busy within the grace: nothing to power down.
        assert!(plan(&cluster(), 0, 0, 0, &recent).actions.is_empty());
        // Powering up is not affected by the grace.
        assert_eq!(
            plan(&cluster(), 0, 10, 0, &recent),
            plan(&cluster(), 0, 10, 0, &none())
        );
    }

    #[test]
    fn states_are_classified() {
        let c = cluster();
        let kinds: Vec<Power> = c.iter().map(SinfoNode::power).collect();
        use Power::*;
        assert_eq!(kinds, [Busy, Idle, Off, Unusable, Off, Booting]);
        assert_eq!(node("static1", "idle", &[], 0).power(), Static);
        assert_eq!(
            node("c", "idle", &["CLOUD", "POWER_DOWN"], 0).power(),
            GoingOff
        );
        assert_eq!(node("c", "idle", &["CLOUD", "DRAIN"], 0).power(), Unusable);
    }
}
