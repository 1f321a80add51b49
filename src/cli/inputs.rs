//! The inputs of a replay, shared by `prescale backtest` and the
//! benchmarks: a trace (SWF log or events file), spot prices and the
//! catalogue, read, checked, retimed and merged into the engine's input
//! events. With no paths, the bundled sample (compiled into the binary, so
//! it works from any directory): a RICC excerpt, a slice of real AWS spot
//! prices and the on-demand catalogue subset in `data/`.

use anyhow::bail;
use prescale::events::{Event, PriceTick};
use prescale::import::events_file::{is_events_file, read_events};
use prescale::import::prices::{parse_prices, read_prices, PriceOptions};
use prescale::import::swf::{parse_swf, read_swf, SwfOptions, SwfReport};
use prescale::pricing::{Catalog, TileOptions, TiledTick, Tiling};
use prescale::sim::inputs::sim_prices_tiled;
use prescale::sim::trace::retime_without_queueing;
use prescale::sim::{SimConfig, SimPrices, TraceInfo, Workload};
use prescale::wiring::{SAMPLE_CATALOG, SAMPLE_CATALOG_NAME};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

pub const SAMPLE_TRACE: &[u8] = include_bytes!("../../data/ricc-2010-2-excerpt.swf.gz");
pub const SAMPLE_TRACE_NAME: &str = "data/ricc-2010-2-excerpt.swf.gz";
pub const SAMPLE_PRICES: &[u8] = include_bytes!("../../data/aws-spot-2022-05-31-us.tsv");
pub const SAMPLE_PRICES_NAME: &str = "data/aws-spot-2022-05-31-us.tsv";

/// A trace, prices and catalogue ready to replay.
pub struct Prepared {
    /// Job events and tiled price ticks, in time order.
    pub events: Vec<Event>,
    pub workload: Workload,
    pub prices: SimPrices,
    pub catalog: Arc<Catalog>,
    pub trace: TraceInfo,
    /// The price ticks as read, before tiling (the bench re-tiles them).
    // Read by `prescale bench` only (feature `bench`).
    #[cfg_attr(not(feature = "bench"), allow(dead_code))]
    pub raw_ticks: Vec<PriceTick>,
}

fn swf_notes(r: &SwfReport) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    m.insert("swf_lines".into(), r.lines);
    m.insert("completed".into(), r.completed);
    m.insert("failed".into(), r.failed);
    m.insert("cancelled".into(), r.cancelled);
    m.insert("cancelled_before_start".into(), r.cancelled_before_start);
    m.insert("partial_lines".into(), r.partial_lines);
    m.insert("skipped_unknown_runtime".into(), r.skipped_unknown_runtime);
    m.insert("skipped_no_processors".into(), r.skipped_no_processors);
    // Only when there are some, so a clean trace's report is unchanged.
    if r.skipped_duplicate_ids > 0 {
        m.insert("skipped_duplicate_ids".into(), r.skipped_duplicate_ids);
    }
    m
}

/// Load the trace (SWF or events file), prices and catalogue.
pub fn prepare(
    trace: Option<&Path>,
    prices: Option<&Path>,
    catalog: Option<&Path>,
    skip_bad: bool,
    max_jobs: Option<usize>,
    keep_trace_waits: bool,
) -> anyhow::Result<Prepared> {
    let swf_opts = SwfOptions {
        skip_bad,
        max_jobs,
        ..Default::default()
    };
    let mut info = TraceInfo::default();
    let (mut events, spot_in_trace): (Vec<Event>, Vec<PriceTick>) = match trace {
        None => {
            let gz = flate2::read::MultiGzDecoder::new(SAMPLE_TRACE);
            let imp = parse_swf(BufReader::new(gz), SAMPLE_TRACE_NAME, &swf_opts)?;
            info.file = format!("{SAMPLE_TRACE_NAME} (bundled)");
            info.format = "swf".into();
            info.skipped_records = imp.report.skipped_bad_lines;
            info.import_notes = swf_notes(&imp.report);
            (imp.events, Vec::new())
        }
        Some(p) if is_events_file(p) => {
            let d = read_events(p, skip_bad)?;
            info.file = p.display().to_string();
            info.format = "events".into();
            info.skipped_records = d.bad.len() as u64;
            let mut jobs = Vec::new();
            let mut ticks = Vec::new();
            for ev in d.events {
                match ev {
                    Event::PriceTick(t) => ticks.push(t),
                    other => jobs.push(other),
                }
            }
            (jobs, ticks)
        }
        Some(p) => {
            let imp = read_swf(p, &swf_opts)?;
            info.file = p.display().to_string();
            info.format = "swf".into();
            info.skipped_records = imp.report.skipped_bad_lines;
            info.import_notes = swf_notes(&imp.report);
            (imp.events, Vec::new())
        }
    };
    let popts = PriceOptions {
        skip_bad,
        ..Default::default()
    };
    let (ticks, prices_name) = match prices {
        Some(p) => {
            let imp = read_prices(p, &popts)?;
            info.skipped_records += imp.report.skipped_bad_lines;
            (imp.ticks, p.display().to_string())
        }
        None if !spot_in_trace.is_empty() => (
            spot_in_trace,
            "(price ticks in the events file)".to_string(),
        ),
        None => {
            let imp = parse_prices(BufReader::new(SAMPLE_PRICES), SAMPLE_PRICES_NAME, &popts)?;
            (imp.ticks, format!("{SAMPLE_PRICES_NAME} (bundled)"))
        }
    };
    let (catalog, catalog_name) = match catalog {
        Some(p) => (Catalog::load(p)?, p.display().to_string()),
        None => (
            Catalog::parse(SAMPLE_CATALOG, SAMPLE_CATALOG_NAME)?,
            format!("{SAMPLE_CATALOG_NAME} (bundled)"),
        ),
    };
    if catalog.is_empty() {
        bail!("{catalog_name}: the catalogue has no instance types");
    }
    if keep_trace_waits {
        events.sort_by_key(|e| e.time());
    } else {
        let n = retime_without_queueing(&mut events);
        info.import_notes
            .insert("completions_retimed_without_queueing".into(), n);
    }
    let start = events.first().map(|e| e.time()).unwrap_or(0);
    let end = events.last().map(|e| e.time()).unwrap_or(0);
    let tiling = Tiling::new(
        &ticks,
        start,
        end,
        &catalog,
        &TileOptions {
            regions: Vec::new(),
            catalog_types_only: true,
        },
    );
    let prices = sim_prices_tiled(&catalog, &tiling);
    if let Some(e) = prescale::limits::span_error(start, end, SimConfig::default().bucket_ms) {
        bail!("{}: {e}", info.file);
    }
    let unplaceable = drop_unplaceable(&mut events, &prices, skip_bad, &info.file)?;
    if unplaceable > 0 {
        info.skipped_records += unplaceable;
        info.import_notes
            .insert("skipped_larger_than_catalogue".into(), unplaceable);
    }
    let workload = Workload::from_events(&events);
    info.jobs = workload.jobs.len() as u64;
    info.compute_environments = workload.envs.len() as u64;
    info.start_ms = start;
    info.end_ms = end;
    info.span_s = (end - start) as f64 / 1000.0;
    info.prices = prices_name;
    info.catalog = catalog_name;
    let merged = merge_thinned(&tiling, events);
    info.price_ticks = merged.price_ticks;
    if merged.folded > 0 {
        info.import_notes
            .insert("price_ticks_in_idle_stretches_folded".into(), merged.folded);
    }
    let all = merged.events;
    info.events = all.len() as u64;
    Ok(Prepared {
        events: all,
        workload,
        prices,
        catalog: Arc::new(catalog),
        trace: info,
        raw_ticks: ticks,
    })
}

/// The job events and the tiled price ticks merged in time order (prices
/// first at equal times, so a decision at t sees the price at t), with the
/// price ticks of idle stretches folded.
struct Merged {
    events: Vec<Event>,
    /// Price ticks the tiling emitted, folded ones included.
    price_ticks: u64,
    /// Price ticks folded away.
    folded: u64,
}

/// Cost grows with events, not with time spans: in a stretch with no job
/// outstanding that starts a full state history window after the last job
/// activity (the engine then sees only zeros and closes the rest of the
/// stretch at once, see `state::DemandState`), only each pool's last price
/// tick is kept, so the price book is the same when work resumes. Tiled
/// prices would otherwise tick through a ten-year gap and wake the engine
/// every few minutes; folded ticks are never written out.
fn merge_thinned(tiling: &Tiling<'_>, jobs: Vec<Event>) -> Merged {
    let cfg = prescale::state::StateConfig::default();
    let window = (cfg.history_buckets as i64 + 2) * cfg.bucket_ms;
    // Sized for every tick, so the (large) vector never moves; the pages
    // of folded ticks are never touched.
    let mut out = Vec::with_capacity(jobs.len() + tiling.emitted_at_most());
    let mut ticks = tiling.iter().peekable();
    let mut outstanding = std::collections::HashSet::new();
    let mut last_activity = i64::MIN;
    let (mut price_ticks, mut folded) = (0u64, 0u64);
    // The idle stretch under way: per pool, its last tick (and its place).
    let mut stretch: Option<Vec<Option<(u64, TiledTick<'_>)>>> = None;
    let jobs = jobs.into_iter().map(Some).chain(std::iter::once(None));
    for job in jobs {
        let until = job.as_ref().map_or(i64::MAX, Event::time);
        while let Some(t) = ticks.next_if(|t| t.at <= until) {
            price_ticks += 1;
            if stretch.is_none()
                && outstanding.is_empty()
                && t.at > last_activity.saturating_add(window)
            {
                stretch = Some(vec![None; tiling.pools()]);
            }
            match stretch.as_mut() {
                Some(last) => {
                    let slot = &mut last[tiling.pool_of(t.index)];
                    folded += u64::from(slot.is_some());
                    *slot = Some((price_ticks, t));
                }
                None => out.push(Event::PriceTick(t.to_tick())),
            }
        }
        if let Some(last) = stretch.take() {
            let mut kept: Vec<(u64, TiledTick<'_>)> = last.into_iter().flatten().collect();
            kept.sort_by_key(|k| k.0);
            out.extend(kept.iter().map(|(_, t)| Event::PriceTick(t.to_tick())));
        }
        let Some(ev) = job else { break };
        last_activity = ev.time();
        match &ev {
            Event::JobSubmitted(j) => {
                outstanding.insert(j.job_id.clone());
            }
            Event::JobCompleted(c) => {
                outstanding.remove(&c.job_id);
            }
            _ => {}
        }
        out.push(ev);
    }
    Merged {
        events: out,
        price_ticks,
        folded,
    }
}

/// Jobs no gang of at most [`prescale::limits::MAX_GANG_INSTANCES`]
/// instances of the catalogue can hold are an error naming the job (with
/// `skip_bad`, they and their completions are dropped and counted).
fn drop_unplaceable(
    events: &mut Vec<Event>,
    prices: &SimPrices,
    skip_bad: bool,
    file: &str,
) -> anyhow::Result<u64> {
    use prescale::limits::MAX_GANG_INSTANCES;
    let max_mcpu = prices
        .types
        .iter()
        .map(|t| t.vcpus as i64 * 1000)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut bad = std::collections::HashSet::new();
    for ev in events.iter() {
        let Event::JobSubmitted(j) = ev else { continue };
        let mcpu = (j.vcpus * 1000.0).round().max(1.0) as i64;
        let fits = (mcpu + max_mcpu - 1) / max_mcpu <= MAX_GANG_INSTANCES
            && prescale::sim::cluster::gang_parts(prices, mcpu, j.memory_mib, j.gpus)
                .is_some_and(|(k, ..)| i64::from(k) <= MAX_GANG_INSTANCES);
        if fits {
            continue;
        }
        if !skip_bad {
            bail!(
                "{file}: job `{}`: {} vCPUs, {} MiB, {} GPUs is more than {MAX_GANG_INSTANCES} \
                 instances of the catalogue can hold (--skip-bad skips such jobs)",
                prescale::limits::quote(&j.job_id),
                j.vcpus,
                j.memory_mib,
                j.gpus
            );
        }
        bad.insert(j.job_id.clone());
    }
    if !bad.is_empty() {
        events.retain(|ev| match ev {
            Event::JobSubmitted(j) => !bad.contains(&j.job_id),
            Event::JobCompleted(c) => !bad.contains(&c.job_id),
            _ => true,
        });
    }
    Ok(bad.len() as u64)
}
