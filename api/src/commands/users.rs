//! `secretum user add|list|revoke|rotate`.

use std::path::Path;

use secretum_engine::db::{self, Layout};
use secretum_engine::governance::accounts::{Accounts, Role};
use secretum_engine::{Result, Warehouse};

use super::local::local_actor;

fn connection(data_dir: &Path) -> Result<rusqlite::Connection> {
    Warehouse::open(data_dir)?;
    db::open(&Layout::new(data_dir).database())
}

/// Create an account; its token goes to stdout, once.
pub fn add(data_dir: &Path, name: &str, role: Role) -> Result<()> {
    let mut conn = connection(data_dir)?;
    let (user, token) = Accounts::new(&mut conn).add(&local_actor(), name, role)?;
    eprintln!("created {} ({}); its token, shown only this once:", user.name, user.role);
    println!("{token}");
    Ok(())
}

pub fn list(data_dir: &Path) -> Result<()> {
    let mut conn = connection(data_dir)?;
    println!("{:<24} {:<11} {:<28} tokens", "user", "role", "created");
    for u in Accounts::new(&mut conn).list()? {
        let tokens: Vec<String> = u.active_tokens.iter().map(|t| format!("{}…", t.prefix)).collect();
        let tokens = if tokens.is_empty() { "(none active)".to_owned() } else { tokens.join(" ") };
        println!("{:<24} {:<11} {:<28} {tokens}", u.name, u.role, u.created_at);
    }
    Ok(())
}

pub fn revoke(data_dir: &Path, name: &str) -> Result<()> {
    let mut conn = connection(data_dir)?;
    let n = Accounts::new(&mut conn).revoke(&local_actor(), name)?;
    println!("revoked {n} token{} of {name}", if n == 1 { "" } else { "s" });
    Ok(())
}

pub fn rotate(data_dir: &Path, name: &str) -> Result<()> {
    let mut conn = connection(data_dir)?;
    let token = Accounts::new(&mut conn).rotate(&local_actor(), name)?;
    eprintln!("{name}'s old tokens are revoked; the new one, shown only this once:");
    println!("{token}");
    Ok(())
}
