//! Adapters between the pure decision core and the outside world. Nothing in
//! `state`, `forecast`, `pricing`, `planner`, `budget` or `engine` knows about
//! these; they only see `Event`s in and `Command`s out.

pub mod actuate;
#[cfg(feature = "aws")]
pub mod aws;
pub mod kafka;
pub mod retrain;
pub mod slurm;
