//! Project budgets across instances against a real broker (tansu via
//! scripts/kafka.sh): spend re-keyed by project through
//! `prescale.budget-spend`, so two instances together keep to one budget.

mod kafka_support;

use kafka_support::*;
use prescale::budget::Ledger;
use prescale::events::{BudgetAllocation, BudgetScope, Event};
use prescale::io::kafka::produce::Pace;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const PROJECT: &str = "p0";

fn allocation(evs: &[Event], usd: f64) -> Vec<Event> {
    let mut v = vec![Event::BudgetAllocation(BudgetAllocation {
        at: evs[0].time() - 1,
        scope: BudgetScope::Project,
        id: PROJECT.into(),
        usd,
        period: None,
    })];
    v.extend(evs.iter().cloned());
    v
}

/// The ledger a file replay of `evs` ends with.
fn replay_ledger(evs: &[Event]) -> Ledger {
    let mut e = factory().engine();
    let mut out = Vec::new();
    for ev in evs {
        e.handle(ev, &mut out);
    }
    e.finish(&mut out);
    e.state().ledger.clone()
}

fn spent(l: &Ledger) -> f64 {
    l.accounts[&format!("project:{PROJECT}")].spent
}

/// Two instances split the environments of project `p0`, whose budget is
/// 40 % of what its work costs. Each alone would hold the whole budget and
/// together they would spend it twice (checked on file replays of each
/// instance's environments); with usage and shares exchanged through the
/// internal topic, their spend together stays within the one budget.
#[test]
fn two_instances_keep_to_one_project_budget() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "budget", state.path());
    create_topics(&cfg);
    let base = events(30, 24);
    let cost = spent(&replay_ledger(&allocation(&base, 1e12)));
    assert!(cost > 0.0, "the project's work costs something");
    let budget = 0.4 * cost;
    let evs = allocation(&base, budget);

    let a = spawn_service(&cfg, "a", Duration::from_millis(2500));
    let b = spawn_service(&cfg, "b", Duration::from_millis(2500));
    wait_for_split(&a, &b);
    // Paced, so that exchange rounds (every 200 ms) happen while the work
    // arrives, as they do live.
    produce(&cfg, &evs, 0, Pace::Rate(400.0));
    a.handle.join().unwrap();
    b.handle.join().unwrap();

    // The final snapshot of each instance's share of the group.
    let ledgers: Vec<Ledger> = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| prescale::checkpoint::read(&e.path()).ok().flatten())
        .filter(|s| s.assignment.len() < 9)
        .map(|s| serde_json::from_value(s.engine["ledger"].clone()).unwrap())
        .collect();
    assert_eq!(ledgers.len(), 2, "one snapshot per instance");
    let envs: Vec<BTreeSet<String>> = ledgers
        .iter()
        .map(|l| {
            l.accounts[&format!("project:{PROJECT}")]
                .by_env
                .keys()
                .cloned()
                .collect()
        })
        .collect();
    assert!(
        envs.iter().all(|e| !e.is_empty()),
        "both instances ran work of the project: {envs:?}"
    );

    // Without the exchange: each instance's environments alone, each with
    // the whole budget.
    let alone: f64 = envs
        .iter()
        .map(|mine| {
            let part: Vec<Event> = evs
                .iter()
                .filter(|e| match e {
                    Event::JobSubmitted(j) => mine.contains(j.compute_environment.as_str()),
                    Event::JobCompleted(c) => mine.contains(c.compute_environment.as_str()),
                    _ => true,
                })
                .cloned()
                .collect();
            spent(&replay_ledger(&part))
        })
        .sum();
    let together: f64 = ledgers.iter().map(spent).sum();
    let one = spent(&replay_ledger(&evs));
    let shares: BTreeMap<String, f64> = ledgers
        .iter()
        .flat_map(|l| {
            l.shares
                .get(&format!("project:{PROJECT}"))
                .cloned()
                .unwrap_or_default()
        })
        .map(|(env, (usd, _))| (env, usd))
        .collect();
    eprintln!(
        "budget ${budget:.4} (work ${cost:.2}); one engine ${one:.4}; alone ${alone:.2}; together ${together:.4}; shares {shares:?}"
    );
    assert!(
        alone > budget * 1.2,
        "the split must overrun without the exchange: ${alone:.2} of ${budget:.2}"
    );
    assert!(!shares.is_empty(), "shares were granted");
    let granted: f64 = shares.values().sum();
    assert!(
        granted <= budget * 1.01,
        "shares add up to at most the budget: {shares:?}"
    );
    // The shares instances hold never add up to more than the budget and
    // each keeps within its own as one engine keeps within the whole: to
    // within what accrues in a decision tick (one engine alone ends 0.1 %
    // over here, two instances up to 0.3 % in ten runs), hence 1 %.
    assert!(
        together <= budget * 1.01,
        "spent ${together:.2} of a ${budget:.2} budget"
    );
    assert!(
        together >= budget * 0.8,
        "the budget is used: ${together:.2}"
    );
}
