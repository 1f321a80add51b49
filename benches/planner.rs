//! Planner throughput on real prices: `cargo bench --bench planner`.
//!
//! Prices: `PRESCALE_BENCH_PRICES` (any file `import::prices` reads, e.g.
//! the full `../shared/data/aws_spot_prices/2022-05.tsv.zst`) or the
//! bundled sample `data/aws-spot-2022-05-31-us.tsv`. Prints the number of
//! offers and the chosen mix, then times one environment plan and one
//! single-job choice.

use criterion::{criterion_group, criterion_main, Criterion};
use prescale::events::Market;
use prescale::forecast::Forecast;
use prescale::import::prices::{read_prices, PriceOptions};
use prescale::planner::{
    offers_from_book, optimal_instances, plan_environment, InstanceRequest, MarketView, PlanInput,
    ShapeFilter,
};
use prescale::policy::EnvPolicy;
use prescale::pricing::{Catalog, PriceBook};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

fn setup() -> (PriceBook, Catalog, i64) {
    let path = std::env::var("PRESCALE_BENCH_PRICES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/aws-spot-2022-05-31-us.tsv")
        });
    let imp = read_prices(&path, &PriceOptions::default()).expect("prices load");
    let mut book = PriceBook::new();
    let mut last = 0;
    for t in &imp.ticks {
        book.apply(t);
        last = last.max(t.at);
    }
    (book, Catalog::bundled(), last)
}

fn bench(c: &mut Criterion) {
    let (book, catalog, now) = setup();
    let policy = EnvPolicy::default();
    let f = Forecast {
        quantiles: vec![0.1, 0.5, 0.9],
        values: vec![vec![1500.0, 2000.0, 2600.0]; 12],
    };
    let rates = BTreeMap::new();
    let input = PlanInput {
        env: "bench",
        now,
        bucket_ms: 300_000,
        forecast: &f,
        queued_vcpus: 100.0,
        running_vcpus: 1800.0,
        top_priority: Some(0),
        deadline_pressure: false,
        memory_mib_per_vcpu: 2048.0,
        gpus_per_vcpu: 0.0,
        policy: &policy,
        book: &book,
        catalog: &catalog,
        reserved: &[],
        budget_headroom_usd_per_h: None,
        previous: None,
        interruption_rates: &rates,
        spot_risk: None,
    };
    let n = offers_from_book(
        &book,
        &catalog,
        now,
        &MarketView {
            max_price_age_ms: policy.max_price_age_s * 1000,
            markets: &policy.markets,
            regions: &[],
            providers: &[],
            instance_types: &[],
            reserved: &[],
            shape: ShapeFilter::ANY,
        },
    )
    .len();
    let out = plan_environment(&input);
    println!("offers: {n}");
    println!("plan: {}", out.reason);
    let req = InstanceRequest {
        vcpus: 8.0,
        memory_mib: 16_384,
        duration_s: Some(7200),
        markets: vec![Market::Spot, Market::OnDemand],
        ..Default::default()
    };
    let best = optimal_instances(&req, &book, &catalog, now);
    if let Some(b) = best.first() {
        println!(
            "job choice: {:?} expected ${:.4}/h",
            b.pools
                .iter()
                .map(|p| format!("{}x {} {} {}", p.count, p.instance_type, p.market, p.region))
                .collect::<Vec<_>>(),
            b.expected_usd_per_hour
        );
    }
    c.bench_function("plan_environment_2000_vcpu", |b| {
        b.iter(|| black_box(plan_environment(black_box(&input))))
    });
    c.bench_function("optimal_instances_single_job", |b| {
        b.iter(|| black_box(optimal_instances(black_box(&req), &book, &catalog, now)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
