//! prescale: forecasts batch demand from scheduler events and decides, ahead of
//! need, the cheapest capacity that keeps deadlines and budgets.
//!
//! The pure decision core (`state`, `forecast`, `pricing`, `planner`,
//! `budget`, `engine`) does no I/O, so the live service and the backtest
//! (`sim`) run exactly the same code. Adapters live in `io` and `import`.

pub mod api;
pub mod budget;
pub mod checkpoint;
pub mod engine;
pub mod events;
pub mod forecast;
pub mod import;
pub mod io;
pub mod limits;
pub mod planner;
pub mod policy;
pub mod pricing;
pub mod report;
pub mod sim;
pub mod state;
pub mod store;
pub mod telemetry;
