//! `cargo xtask bench`.

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub fn bench(_args: &BenchArgs) -> Result<()> {
    anyhow::bail!("not written yet")
}
