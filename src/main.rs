//! The `prescale` command line. Library errors are typed (`thiserror`); this
//! binary edge turns them into `anyhow` reports.

mod cli;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    cli::run(args)
}
