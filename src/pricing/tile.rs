//! Price histories tiled onto a trace's span, without writing out every
//! copy: public spot histories are short (the bundled one covers hours) and
//! traces span years, so the tiled ticks are many more than the history
//! (ten years of the bundled sample: ~900,000) while all but the first copy
//! are alike. [`Tiling`] holds one copy and says which of its ticks each
//! copy emits; readers walk the emitted ticks by index and write out only
//! the ones they keep.

use super::book::PoolKey;
use super::Catalog;
use crate::events::{Millis, PriceTick};
use std::collections::HashMap;

/// Which ticks to keep when tiling a history onto a trace.
#[derive(Debug, Clone, Default)]
pub struct TileOptions {
    /// Keep only these regions (all when empty).
    pub regions: Vec<String>,
    /// Keep only instance types the catalogue knows (the planner cannot use others).
    pub catalog_types_only: bool,
}

/// A price history shifted and tiled onto a trace's span.
///
/// The rule: the history is shifted so that its first tick falls on
/// `start`, then repeated with a period of its span rounded up to whole
/// hours until `end`. Within each copy every pool follows its real recorded
/// path; at each copy boundary a pool jumps back to its first recorded
/// price. Ticks that repeat a pool's previous price are dropped (they carry
/// no information), so the first copy may emit more than the later ones,
/// which all emit the same ticks (each starts from the previous copy's last
/// prices, which are the history's).
#[derive(Debug, Clone)]
pub struct Tiling<'a> {
    /// One copy: the kept ticks in time order (stable), and their pool.
    ticks: Vec<&'a PriceTick>,
    pool: Vec<usize>,
    pools: usize,
    /// Whether tick `i` is emitted in the first copy, in later copies.
    first_copy: Vec<bool>,
    later_copies: Vec<bool>,
    start: Millis,
    end: Millis,
    first: Millis,
    period: Millis,
}

/// One emitted tick: where it falls and the history's tick it copies.
#[derive(Debug, Clone, Copy)]
pub struct TiledTick<'a> {
    pub at: Millis,
    /// Index of the history's tick in the copy (see [`Tiling::source`]).
    pub index: usize,
    pub tick: &'a PriceTick,
}

impl TiledTick<'_> {
    /// The tick as an event.
    pub fn to_tick(&self) -> PriceTick {
        PriceTick {
            at: self.at,
            ..self.tick.clone()
        }
    }
}

impl<'a> Tiling<'a> {
    pub fn new(
        ticks: &'a [PriceTick],
        start: Millis,
        end: Millis,
        catalog: &Catalog,
        opts: &TileOptions,
    ) -> Self {
        let mut keep: Vec<&PriceTick> = ticks
            .iter()
            .filter(|t| opts.regions.is_empty() || opts.regions.iter().any(|r| *r == t.region))
            .filter(|t| !opts.catalog_types_only || catalog.spec(&t.instance_type).is_some())
            .collect();
        keep.sort_by_key(|t| t.at);
        let first = keep.first().map_or(0, |t| t.at);
        let last = keep.last().map_or(0, |t| t.at);
        const HOUR: i64 = 3_600_000;
        let period = ((last - first) / HOUR + 1) * HOUR;
        let mut ids: HashMap<PoolKey, usize> = HashMap::new();
        let pool: Vec<usize> = keep
            .iter()
            .map(|t| {
                let n = ids.len();
                *ids.entry(PoolKey::of(t)).or_insert(n)
            })
            .collect();
        let pools = ids.len();
        // A copy emits a tick whose price differs from its pool's last one.
        let emits = |last: &mut Vec<Option<f64>>| -> Vec<bool> {
            keep.iter()
                .zip(&pool)
                .map(|(t, &p)| last[p].replace(t.usd_per_hour) != Some(t.usd_per_hour))
                .collect()
        };
        let mut last = vec![None; pools];
        let first_copy = emits(&mut last);
        let later_copies = emits(&mut last);
        Tiling {
            ticks: keep,
            pool,
            pools,
            first_copy,
            later_copies,
            start,
            end,
            first,
            period,
        }
    }

    /// Number of distinct pools; [`Tiling::pool_of`] indexes them.
    pub fn pools(&self) -> usize {
        self.pools
    }

    /// The pool of the copy's tick `index`.
    pub fn pool_of(&self, index: usize) -> usize {
        self.pool[index]
    }

    /// The history's tick `index` of the copy.
    pub fn source(&self, index: usize) -> &'a PriceTick {
        self.ticks[index]
    }

    /// Ticks in one copy of the history (what [`Tiling::source`] indexes).
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    /// Copies of the history that start within the span.
    fn copies(&self) -> i64 {
        if self.ticks.is_empty() || self.end < self.start {
            0
        } else {
            (self.end - self.start) / self.period + 1
        }
    }

    /// How many ticks [`Tiling::iter`] emits at most (exactly, unless the
    /// span cuts the last copy short): to size what collects them.
    pub fn emitted_at_most(&self) -> usize {
        let count = |e: &[bool]| e.iter().filter(|&&x| x).count();
        let later = self.copies().max(1) as usize - 1;
        let first = if self.copies() > 0 {
            count(&self.first_copy)
        } else {
            0
        };
        first + later * count(&self.later_copies)
    }

    /// Every emitted tick, in time order.
    pub fn iter(&self) -> impl Iterator<Item = TiledTick<'a>> + Clone + '_ {
        (0..self.copies()).flat_map(move |k| {
            let base = self.start + k * self.period;
            let emits = if k == 0 {
                &self.first_copy
            } else {
                &self.later_copies
            };
            self.ticks
                .iter()
                .enumerate()
                .map(move |(i, t)| (i, base + (t.at - self.first), t))
                .take_while(|&(_, at, _)| at <= self.end)
                .filter(|&(i, ..)| emits[i])
                .map(|(index, at, tick)| TiledTick { at, index, tick })
        })
    }

    /// Every emitted tick as an event (what [`tile_onto`] returns).
    pub fn to_ticks(&self) -> Vec<PriceTick> {
        self.iter().map(|t| t.to_tick()).collect()
    }
}

/// Time-shift and tile a price history onto a trace's time span (see
/// [`Tiling`] for the rule), every emitted tick written out.
pub fn tile_onto(
    ticks: &[PriceTick],
    start: Millis,
    end: Millis,
    catalog: &Catalog,
    opts: &TileOptions,
) -> Vec<PriceTick> {
    Tiling::new(ticks, start, end, catalog, opts).to_ticks()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::book::tests::tick;
    use std::collections::BTreeMap;

    #[test]
    fn tiling_shifts_and_repeats() {
        let h = 3_600_000;
        let ticks = vec![
            tick(10 * h, "m5.large", 0.03),
            tick(10 * h + h / 2, "m5.large", 0.04),
        ];
        let out = tile_onto(
            &ticks,
            0,
            3 * h,
            &Catalog::bundled(),
            &TileOptions::default(),
        );
        let times: Vec<_> = out.iter().map(|t| t.at).collect();
        assert_eq!(
            times,
            vec![0, h / 2, h, h + h / 2, 2 * h, 2 * h + h / 2, 3 * h]
        );
    }

    /// The rule written out copy by copy, every tick checked against its
    /// pool's last price (what [`Tiling`] computes once per copy kind).
    fn by_hand(ticks: &[PriceTick], start: Millis, end: Millis) -> Vec<PriceTick> {
        let mut sorted: Vec<&PriceTick> = ticks.iter().collect();
        sorted.sort_by_key(|t| t.at);
        let first = sorted[0].at;
        let period = ((sorted.last().unwrap().at - first) / 3_600_000 + 1) * 3_600_000;
        let mut last: BTreeMap<PoolKey, f64> = BTreeMap::new();
        let mut out = Vec::new();
        let mut base = start;
        while base <= end {
            for t in &sorted {
                let at = base + (t.at - first);
                if at > end {
                    break;
                }
                if last.insert(PoolKey::of(t), t.usd_per_hour) != Some(t.usd_per_hour) {
                    out.push(PriceTick { at, ..(*t).clone() });
                }
            }
            base += period;
        }
        out
    }

    /// Pools whose prices repeat across the copy boundary, ticks at equal
    /// times, a span that cuts the last copy: the same ticks as by hand.
    #[test]
    fn tiling_emits_what_the_rule_says() {
        let h = 3_600_000;
        let mut ticks = Vec::new();
        for i in 0..40i64 {
            let ty = ["m5.large", "c5.xlarge", "r5.large"][(i % 3) as usize];
            let usd = [0.03, 0.04, 0.03, 0.05][((i * 7) % 4) as usize];
            ticks.push(tick(5 * h + (i * 97_000) % (3 * h), ty, usd));
        }
        ticks.push(tick(5 * h, "m5.large", 0.03));
        let c = Catalog::bundled();
        for end in [0, h, 7 * h + 12_345, 40 * h] {
            let got = tile_onto(&ticks, 1_000, end, &c, &TileOptions::default());
            assert_eq!(got, by_hand(&ticks, 1_000, end), "end {end}");
            let tiling = Tiling::new(&ticks, 1_000, end, &c, &TileOptions::default());
            assert!(tiling.emitted_at_most() >= got.len(), "end {end}");
        }
        // A span of whole copies: the bound is the count.
        let t = Tiling::new(&ticks, 0, 4 * 3 * h - 1, &c, &TileOptions::default());
        assert_eq!(t.emitted_at_most(), t.iter().count());
    }
}
