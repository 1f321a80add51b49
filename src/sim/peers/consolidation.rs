//! Karpenter's consolidation, as a child module of `sim::cluster` (it moves
//! jobs between instances, so it needs the cluster's instance state).
//!
//! Rules (Karpenter v1 `consolidationPolicy: WhenEmptyOrUnderutilized`,
//! <https://karpenter.sh/docs/concepts/disruption/#consolidation>):
//! - **Empty** nodes are deleted after `consolidateAfter`: the cluster's
//!   idle timeout, which the `karpenter` peer sets to `consolidateAfter`.
//! - A node is a **candidate** when every job on it can be evicted and
//!   nothing was scheduled on it for `consolidateAfter`. Jobs that would
//!   lose work are not evictable: a rigid job restarts from zero, so its
//!   pod carries `karpenter.sh/do-not-disrupt` as Karpenter's docs advise
//!   for jobs; elastic single-part jobs keep their progress and may move.
//! - **Multi-node** consolidation first: the largest prefix of the
//!   candidates (fewest busy vCPUs first, at most 100) whose jobs fit one
//!   new node cheaper than all of them together is replaced by it.
//! - **Single-node** next, candidate by candidate: deleted when its jobs fit
//!   the free room of other nodes, else replaced by one cheaper node; a spot
//!   node is replaced by spot only when at least 15 cheaper spot types fit
//!   (Karpenter's spot-to-spot rule, so it does not chase the cheapest and
//!   most interrupted pool).
//! - One disruption at a time: a **replacement** is launched first; when it
//!   is ready the old nodes' jobs move onto it and the old nodes are
//!   deleted (a node that took a job that cannot move meanwhile stays).

use super::*;

/// Karpenter caps multi-node consolidation at this many candidates.
const MAX_MULTI_NODE: usize = 100;

/// Spot-to-spot single-node replacement needs this many cheaper types.
const MIN_SPOT_TO_SPOT_TYPES: usize = 15;

/// A replacement being launched: the new instance and the ones it replaces.
#[derive(Debug, Clone, Default)]
pub(super) struct Pending {
    replacement: Option<(u32, Vec<u32>)>,
    /// Per instance: (jobs, free vCPUs) when last looked at and since when
    /// unchanged — `consolidateAfter` counts from a node's last pod change.
    seen: std::collections::HashMap<u32, (usize, i64, Millis)>,
}

/// What a set of nodes' jobs need in one place.
#[derive(Debug, Clone, Copy, Default)]
struct Need {
    mcpu: i64,
    mem: i64,
    gpu: i32,
}

impl<'a> Cluster<'a> {
    /// Can job `j` be evicted without losing work?
    fn movable(&self, j: u32) -> bool {
        let s = &self.js[j as usize];
        self.jobs[j as usize].elastic && s.parts == 1 && !s.held
    }

    /// Is instance `i` a consolidation candidate at `t`? (`since`: when its
    /// jobs last changed, as far as the consolidation has seen.)
    fn candidate(&self, i: u32, t: Millis, after: Millis, since: Millis) -> bool {
        let inst = &self.insts[i as usize];
        inst.alive
            && inst.ready
            && !inst.pinned
            && !inst.jobs.is_empty()
            && inst.launched + after <= t
            && since + after <= t
            && inst
                .jobs
                .iter()
                .all(|&j| self.movable(j) && self.js[j as usize].run_start + after <= t)
    }

    /// Note each alive instance's jobs; returns since when each has been
    /// unchanged.
    fn observe(&mut self, t: Millis) -> std::collections::HashMap<u32, Millis> {
        let mut seen = std::mem::take(&mut self.consolidation.seen);
        seen.retain(|&i, _| self.insts[i as usize].alive);
        let mut since = std::collections::HashMap::new();
        for &i in &self.alive {
            let inst = &self.insts[i as usize];
            let sig = (inst.jobs.len(), inst.free_mcpu);
            let e = seen.entry(i).or_insert((sig.0, sig.1, t));
            if (e.0, e.1) != sig {
                *e = (sig.0, sig.1, t);
            }
            since.insert(i, e.2);
        }
        self.consolidation.seen = seen;
        since
    }

    fn need_of(&self, nodes: &[u32]) -> Need {
        let mut n = Need::default();
        for &i in nodes {
            for &j in &self.insts[i as usize].jobs {
                let s = &self.js[j as usize];
                n.mcpu += s.part_mcpu;
                n.mem += s.part_mem;
                n.gpu += s.part_gpu;
            }
        }
        n
    }

    fn price_now(&self, i: u32, t: Millis) -> f64 {
        self.prices.pools[self.insts[i as usize].pool].curve.at(t)
    }

    /// The cheapest pool whose type holds `need`, cheaper than `below`:
    /// spot first when the rules say so (spot pools that cannot launch now
    /// left out), and how many cheaper spot types fit.
    fn replacement_pool(
        &self,
        need: Need,
        below: f64,
        t: Millis,
        od_only: bool,
    ) -> (Option<usize>, usize) {
        let mut best_spot: Option<(f64, usize)> = None;
        let mut best_od: Option<(f64, usize)> = None;
        let mut cheaper_spot_types = 0;
        for (p, pool) in self.prices.pools.iter().enumerate() {
            let ty = &self.prices.types[pool.ty];
            if (ty.vcpus as i64) * 1000 < need.mcpu
                || ty.memory_mib < need.mem
                || ty.gpus < need.gpu
            {
                continue;
            }
            let price = pool.curve.at(t);
            if price >= below {
                continue;
            }
            let slot = match pool.market {
                Market::Spot => {
                    if od_only || !self.spot_available(p, t) {
                        continue;
                    }
                    cheaper_spot_types += 1;
                    &mut best_spot
                }
                Market::OnDemand => &mut best_od,
                _ => continue,
            };
            if slot.is_none_or(|b| price < b.0) {
                *slot = Some((price, p));
            }
        }
        let pick = match (best_spot, best_od) {
            (Some(s), _) if self.rules.spot_first => Some(s.1),
            (Some(s), Some(o)) => Some(if s.0 <= o.0 { s.1 } else { o.1 }),
            (s, o) => s.or(o).map(|x| x.1),
        };
        (pick, cheaper_spot_types)
    }

    fn any_od_only(&self, nodes: &[u32], t: Millis) -> bool {
        nodes
            .iter()
            .flat_map(|&i| self.insts[i as usize].jobs.iter())
            .any(|&j| self.od_only(j, t))
    }

    /// One consolidation decision at `t` (called on every sample).
    pub(super) fn consolidate(&mut self, t: Millis, after: Millis) {
        let since = self.observe(t);
        if let Some((new, _)) = &self.consolidation.replacement {
            if self.insts[*new as usize].alive {
                return; // one disruption at a time
            }
            self.consolidation.replacement = None;
        }
        let mut cands: Vec<u32> = self
            .alive
            .iter()
            .copied()
            .filter(|&i| self.candidate(i, t, after, since[&i]))
            .collect();
        if cands.is_empty() {
            return;
        }
        cands.sort_by_key(|&i| {
            let inst = &self.insts[i as usize];
            (inst.mcpu - inst.free_mcpu, i)
        });
        cands.truncate(MAX_MULTI_NODE);
        // Multi-node: the largest prefix one cheaper node can hold.
        for k in (2..=cands.len()).rev() {
            let nodes = &cands[..k];
            let below: f64 = nodes.iter().map(|&i| self.price_now(i, t)).sum();
            let od_only = self.any_od_only(nodes, t);
            if let (Some(p), _) = self.replacement_pool(self.need_of(nodes), below, t, od_only) {
                self.start_replacement(t, p, nodes.to_vec());
                return;
            }
        }
        // Single-node: delete onto existing room, else replace.
        for &i in &cands {
            if self.delete_onto_others(t, i) {
                return;
            }
            let od_only = self.any_od_only(&[i], t);
            let (p, cheaper_spot) =
                self.replacement_pool(self.need_of(&[i]), self.price_now(i, t), t, od_only);
            let Some(p) = p else { continue };
            let spot_to_spot = self.prices.pools[self.insts[i as usize].pool].market
                == Market::Spot
                && self.prices.pools[p].market == Market::Spot;
            if spot_to_spot && cheaper_spot < MIN_SPOT_TO_SPOT_TYPES {
                continue;
            }
            self.start_replacement(t, p, vec![i]);
            return;
        }
    }

    fn start_replacement(&mut self, t: Millis, pool: usize, olds: Vec<u32>) {
        let new = self.launch(pool, t);
        self.consolidation.replacement = Some((new, olds));
    }

    /// The replacement `i` is ready: move the old nodes' jobs onto it and
    /// delete them.
    pub(super) fn replacement_ready(&mut self, t: Millis, i: u32) {
        let Some((new, olds)) = self.consolidation.replacement.take() else {
            return;
        };
        if new != i {
            self.consolidation.replacement = Some((new, olds));
            return;
        }
        let spot = self.prices.pools[self.insts[i as usize].pool].market == Market::Spot;
        for old in olds {
            let inst = &self.insts[old as usize];
            if !inst.alive {
                continue;
            }
            let jobs = inst.jobs.clone();
            let fits_all = jobs
                .iter()
                .all(|&j| self.movable(j) && !(spot && self.od_only(j, t)))
                && {
                    let n = self.need_of(&[old]);
                    let r = &self.insts[i as usize];
                    r.free_mcpu >= n.mcpu && r.free_mem >= n.mem && r.free_gpu >= n.gpu
                };
            if !fits_all {
                continue;
            }
            for j in jobs {
                self.move_job(t, j, i);
            }
            self.terminate(t, old);
            self.stats.consolidations += 1;
        }
    }

    /// Delete node `i` when each of its jobs fits the free room of another
    /// ready node (first fit); moves them now.
    fn delete_onto_others(&mut self, t: Millis, i: u32) -> bool {
        let jobs = self.insts[i as usize].jobs.clone();
        let mut room: Vec<(u32, i64, i64, i32, bool)> = self
            .alive
            .iter()
            .copied()
            .filter(|&k| k != i)
            .map(|k| &self.insts[k as usize])
            .filter(|x| x.ready)
            .map(|x| {
                let spot = self.prices.pools[x.pool].market == Market::Spot;
                (0, x.free_mcpu, x.free_mem, x.free_gpu, spot)
            })
            .collect();
        let ids: Vec<u32> = self
            .alive
            .iter()
            .copied()
            .filter(|&k| k != i && self.insts[k as usize].ready)
            .collect();
        for (r, &id) in room.iter_mut().zip(&ids) {
            r.0 = id;
        }
        let mut plan: Vec<(u32, u32)> = Vec::new();
        for &j in &jobs {
            let s = &self.js[j as usize];
            let od_only = self.od_only(j, t);
            let Some(r) = room.iter_mut().find(|r| {
                r.1 >= s.part_mcpu && r.2 >= s.part_mem && r.3 >= s.part_gpu && !(od_only && r.4)
            }) else {
                return false;
            };
            r.1 -= s.part_mcpu;
            r.2 -= s.part_mem;
            r.3 -= s.part_gpu;
            plan.push((j, r.0));
        }
        for (j, dest) in plan {
            self.move_job(t, j, dest);
        }
        self.terminate(t, i);
        self.stats.consolidations += 1;
        true
    }

    /// Evict running job `j` and start it on `dest` at once, keeping its
    /// progress (only movable jobs get here).
    fn move_job(&mut self, t: Millis, j: u32, dest: u32) {
        let ran = t - self.js[j as usize].run_start;
        self.stop_job(t, j);
        let s = &mut self.js[j as usize];
        s.remaining_ms = (s.remaining_ms - ran).max(0);
        self.queued_mcpu += self.jobs[j as usize].mcpu; // start_job takes it off again
        self.start_job(t, j, vec![dest]);
    }
}
