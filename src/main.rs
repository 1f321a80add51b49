//! The `prescale` command line. Library errors are typed (`thiserror`); this
//! binary edge turns them into `anyhow` reports.

mod cli;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the state frees millions of small
/// job records, and glibc's `malloc_consolidate` then walked its fast bins
/// on every large allocation (a sixth of a dense replay's decision ticks).
///
/// With the `override` feature it also serves librdkafka's C `malloc`/`free`:
/// librdkafka allocates each fetched message on its broker thread and the
/// consumer frees it on another, and under glibc those frees queued on the
/// broker thread's arena lock (thousands of futex waits a second). Raw
/// consumption went from about 1.3M to 2.2M messages/s on two cores, and
/// the service's full path from about 0.42M to 0.66M (`prescale bench kafka`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    cli::run(args)
}
