//! `secretum project create|list|show|approve|reject|suspend|resume|close`.

use std::path::Path;

use secretum_engine::budget::zcdp_rho_for;
use secretum_engine::governance::Accounting;

use secretum_engine::budget::Ledger;
use secretum_engine::governance::{Approval, Governance, Project, Transition};
use secretum_engine::{Result, Warehouse};

use super::local::local_actor;

fn print_project(p: &Project) {
    println!("project #{} {} ({}), created {}", p.id, p.name, p.status, p.created_at);
    if !p.title.is_empty() {
        println!("title: {}", p.title);
    }
    if let Some(o) = &p.owner {
        println!("owner: {o}; members: {}", p.members.join(", "));
    }
    if let Some(r) = &p.requested {
        println!("requested: ε {}, δ {:e}, tables {}, {} days", r.epsilon, r.delta, r.tables.join(","), p.duration_days.unwrap_or(0));
    }
    println!("tables: {}", p.tables.join(", "));
    println!("ε: {} granted, {:.6} spent, {:.6} left", p.epsilon, p.epsilon_spent, p.epsilon_remaining());
    println!("δ: {:e} granted, {:e} spent, {:e} left", p.delta, p.delta_spent, p.delta_remaining());
    if p.accounting == Accounting::Zcdp {
        let granted = zcdp_rho_for(p.epsilon, p.delta).unwrap_or(0.0);
        println!(
            "ρ (zCDP accounting): {granted:.6} granted, {:.6} spent, {:.6} left; the ε spent above is what ρ {:.6} implies at δ {:e}",
            p.rho_spent,
            (granted - p.rho_spent).max(0.0),
            p.rho_spent,
            p.delta
        );
    }
    if let Some(e) = &p.expires_at {
        println!("expires: {e}");
    }
    if let Some(r) = &p.reason {
        println!("reason: {r}");
    }
}

fn governance(data_dir: &Path) -> Result<(Warehouse, Governance)> {
    let wh = Warehouse::open(data_dir)?;
    Ok((wh, Governance::open(data_dir)?))
}

/// A project granted at once by the steward.
pub fn create(data_dir: &Path, name: &str, epsilon: f64, delta: f64, tables: &[String], accounting: Accounting) -> Result<()> {
    let (wh, mut g) = governance(data_dir)?;
    let tables: Vec<String> = tables.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
    let known: Vec<String> = wh.schemas.tables.keys().cloned().collect();
    // Checked before the project exists: it is created, then its accounting set.
    secretum_engine::governance::check_accounting(accounting, delta)?;
    let mut p = g.create_project(&local_actor(), name, epsilon, delta, &tables, &known)?;
    if accounting != p.accounting {
        p = g.set_accounting(&local_actor(), &p.name, accounting)?;
    }
    println!(
        "created project {} (ε {}, δ {:e}, {} accounting) on tables {}",
        p.name,
        p.epsilon,
        p.delta,
        p.accounting.name(),
        p.tables.join(", ")
    );
    if p.accounting == Accounting::Zcdp {
        println!(
            "  ρ-zCDP budget: ρ {:.6} (the largest ρ that implies (ε {}, δ {:e}))",
            zcdp_rho_for(p.epsilon, p.delta)?,
            p.epsilon,
            p.delta
        );
    }
    Ok(())
}

pub fn list(data_dir: &Path) -> Result<()> {
    let (_wh, g) = governance(data_dir)?;
    println!("{:<24} {:<9} {:>10} {:>10} {:>10} {:>10}  tables", "project", "status", "ε granted", "ε spent", "δ granted", "δ spent");
    for p in g.projects()? {
        println!(
            "{:<24} {:<9} {:>10} {:>10.4} {:>10.1e} {:>10.1e}  {}",
            p.name,
            p.status,
            p.epsilon,
            p.epsilon_spent,
            p.delta,
            p.delta_spent,
            p.tables.join(",")
        );
    }
    Ok(())
}

/// One project and its ledger entries.
pub fn show(data_dir: &Path, reference: &str) -> Result<()> {
    let (_wh, g) = governance(data_dir)?;
    let p = g.existing(reference)?;
    print_project(&p);
    for e in Ledger::open(data_dir)?.entries(&p.name)? {
        let replays = match e.replays {
            0 => String::new(),
            1 => ", replayed once for free".into(),
            n => format!(", replayed {n} times for free"),
        };
        let rho = if p.accounting == Accounting::Zcdp { format!(" ρ {:.6}", e.rho) } else { String::new() };
        println!("  #{:<6} {}  ε {:<8.6} δ {:<8e}{rho} {}{replays}", e.id, e.created_at, e.epsilon, e.delta, e.status);
    }
    Ok(())
}

pub fn approve(data_dir: &Path, reference: &str, approval: &Approval) -> Result<()> {
    let (_wh, mut g) = governance(data_dir)?;
    print_project(&g.approve(reference, &local_actor(), approval)?);
    Ok(())
}

pub fn reject(data_dir: &Path, reference: &str, reason: &str) -> Result<()> {
    let (_wh, mut g) = governance(data_dir)?;
    print_project(&g.reject(reference, &local_actor(), reason)?);
    Ok(())
}

/// Suspend, resume or close.
pub fn transition(data_dir: &Path, reference: &str, t: Transition, reason: Option<&str>) -> Result<()> {
    let (_wh, mut g) = governance(data_dir)?;
    print_project(&g.transition(reference, &local_actor(), t, reason)?);
    Ok(())
}
