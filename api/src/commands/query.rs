//! `secretum query` on the data directory (the server path is [`crate::client`]).

use std::path::Path;

use secretum_engine::budget::Ledger;
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::{Result, Warehouse};

use super::local::runtime;
use crate::output::{self, Format};

/// Answer one query locally (audited and charged like any other) and print it.
pub fn run(data_dir: &Path, req: &QueryRequest, format: Format) -> Result<()> {
    let wh = Warehouse::open(data_dir)?;
    let mut ledger = Ledger::open(data_dir)?;
    let answer = runtime()?.block_on(dp::run(&wh, &mut ledger, req, Noise::OpenDp))?;
    output::print(&answer, format);
    Ok(())
}
