//! The `prescale` command line. Library errors are typed (`thiserror`); this
//! binary edge turns them into `anyhow` reports.

mod cli;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the state frees millions of small
/// job records, and glibc's `malloc_consolidate` then walked its fast bins
/// on every large allocation (a sixth of a dense replay's decision ticks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    cli::run(args)
}
