//! Prices: the instance catalogue (shapes and on-demand prices) and the price
//! book (latest and historical prices per pool from `price-tick` events).

pub(crate) mod book;
mod catalog;

pub use book::{tile_onto, Offer, PoolKey, PriceBook, TileOptions};
pub use catalog::{Catalog, CatalogError, InstanceSpec};
