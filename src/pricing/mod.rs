//! Prices: the instance catalogue (shapes and on-demand prices) and the price
//! book (latest and historical prices per pool from `price-tick` events).

pub(crate) mod book;
mod catalog;
pub mod spot_risk;
mod tile;

pub use book::{Offer, OfferRef, PoolKey, PriceBook};
pub use catalog::{Catalog, CatalogError, InstanceSpec};
pub use tile::{tile_onto, TileOptions, TiledTick, Tiling};

/// Spot interruptions per instance-hour assumed where nothing better is
/// known (the planner's risk model, the simulator's draw).
///
/// AWS's Spot Instance Advisor publishes, per pool, the share of instances
/// reclaimed over the trailing month in buckets from "<5 %" to ">20 %";
/// the worst bucket, 20 % a month, is about 0.0003 per hour. 0.01 per hour
/// (about 7 interruptions per instance-month) is over 30 times that: a
/// deliberately pessimistic default, so savings claimed on spot survive a
/// bad month. Measured rates per pool override it (`interruption_rates`,
/// `--spot-rate`); the backtest's sensitivity to it is in `docs/planner.md`.
pub const DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR: f64 = 0.01;
