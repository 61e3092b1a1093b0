//! `secretum policy set|show`.

use std::path::Path;

use secretum_engine::budget::Ledger;
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::{Result, Warehouse};

use super::local::local_actor;

/// Change the policy (only what is given), then show it.
pub fn set(data_dir: &Path, update: &PolicyUpdate) -> Result<()> {
    Warehouse::open(data_dir)?;
    Governance::open(data_dir)?.set_policy(&local_actor(), update)?;
    show(data_dir)
}

/// The policy and what all projects together have spent.
pub fn show(data_dir: &Path) -> Result<()> {
    Warehouse::open(data_dir)?;
    let p = Governance::open(data_dir)?.policy()?;
    let spent = Ledger::open(data_dir)?.spent()?;
    println!("patient ε cap (all projects together): {}", p.patient_epsilon_cap);
    println!("patient δ cap (all projects together): {:e}", p.patient_delta_cap);
    println!("per-query ε cap:                       {}", p.query_epsilon_cap);
    println!("small-cell suppression threshold:      {}", p.suppression_threshold);
    println!("rounding of non-count values:          {} decimal digits", p.round_digits);
    println!("ε spent by all projects:               {:.6}", spent.epsilon);
    println!("δ spent by all projects:               {:e}", spent.delta);
    Ok(())
}
