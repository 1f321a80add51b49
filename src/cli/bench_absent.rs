//! `prescale bench` in a build without the `bench` feature.
//!
//! The benchmarks (and `tempfile` / `cpu-time`, which only they use) are
//! left out of product builds. The sub-command stays, visible in `--help`,
//! so someone following the README's bench lines learns how to get them
//! instead of meeting clap's "unrecognised subcommand".

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The benchmark and its flags (`replay`, `kafka`, `store`, `spot`, `sparse`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let which = a
        .args
        .first()
        .map(String::as_str)
        .unwrap_or("<replay|kafka|store|spot|sparse>");
    anyhow::bail!(
        "`prescale bench {which}` is not in this build: the benchmarks are behind the cargo \
         feature `bench`; rebuild with `cargo build --release --features bench` \
         (or `--features aws,bench`)"
    )
}
