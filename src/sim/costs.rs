//! Where a run's money went: busy (jobs ran on it) against idle/booting,
//! and the work that was lost to restarts. Derived from the spend segments
//! the cluster records, after the run.

use super::cluster::RunStats;
use super::prices::SimPrices;
use super::trace::SimJob;
use std::collections::HashMap;

/// Fill `busy_usd` of each type in `st.cost_by_type` and `st.lost_work_usd`
/// from `st.spend` (`jobs` are the cluster's jobs, as the segments index
/// them). A rigid job's runs before its last one were lost (it restarted
/// from zero); an elastic job kept its progress, so nothing is lost.
pub fn attribute_spend(st: &mut RunStats, jobs: &[&SimJob], prices: &SimPrices) {
    let mut last_start: HashMap<u32, i64> = HashMap::new();
    for s in &st.spend {
        let e = last_start.entry(s.job).or_insert(s.start);
        *e = (*e).max(s.start);
    }
    let mut lost = 0.0;
    for s in &st.spend {
        let usd = s.cost_within(prices, s.start, s.end);
        let pool = &prices.pools[s.pool];
        let key = (prices.types[pool.ty].name.clone(), pool.market);
        if let Some(tc) = st.cost_by_type.get_mut(&key) {
            tc.busy_usd += usd;
        }
        let rigid = jobs.get(s.job as usize).is_some_and(|j| !j.elastic);
        if rigid && s.start < last_start[&s.job] {
            lost += usd;
        }
    }
    st.lost_work_usd += lost;
}
