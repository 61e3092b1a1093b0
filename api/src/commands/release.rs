//! Signed release bundles: `secretum release export` and `secretum release verify`, and
//! `secretum info` (which prints the public key bundles are checked with).
//!
//! A bundle is everything a reader of a paper needs to check that a number came out of this
//! warehouse under the stated privacy loss: the SQL, the bounded plan in secretum's words (bounds,
//! sensitivities, groups), each aggregate's mechanism and ε, the ε/δ charged, the released table
//! (noisy values and intervals, as the answer gave them), the data version, the time, the project
//! and the hash of the release's entry in the hash-chained audit log; signed with the
//! warehouse's Ed25519 key (see `secretum_engine::signing`).

use std::path::Path;

use rusqlite::OptionalExtension;
use secretum_engine::budget::Ledger;
use secretum_engine::dp::answer::Answer;
use secretum_engine::signing::{self, BUNDLE_FORMAT, Signer};
use secretum_engine::{Error, Result, Warehouse};
use serde_json::{Value, json};

use crate::output;

/// The signed bundle of a released query (by its query id).
pub fn bundle(data_dir: &Path, ledger: &Ledger, query_id: i64) -> Result<Value> {
    let (stored, project) = ledger.stored_release(query_id)?.ok_or_else(|| {
        Error::not_found("release", format!("for query {query_id} (only answered queries have one; a replay is exported as its original)"))
    })?;
    let conn = ledger.connection();
    let (sql, epsilon, delta, released_at): (String, f64, f64, Option<String>) =
        conn.query_row("SELECT sql, epsilon, delta, finished_at FROM ledger WHERE id = ?1", [query_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let audit_hash: Option<String> = conn
        .query_row(
            "SELECT hash FROM audit WHERE action = 'query.answered' AND detail = ?1 ORDER BY id LIMIT 1",
            [format!("ledger entry {query_id}")],
            |r| r.get(0),
        )
        .optional()?;
    let answer = Answer::from_stored(&stored.batch, &stored.report)?;
    let shown = output::json(&answer);
    let digest = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&stored.batch))
    };
    let report = serde_json::to_value(&answer.report).map_err(Error::internal)?;
    let release = json!({
        "query_id": query_id,
        "project": project,
        "sql": sql,
        "epsilon": epsilon,
        "delta": delta,
        "released_at": released_at,
        "data_version": stored.data_version,
        "plan": stored.summary.lines().collect::<Vec<_>>(),
        "mechanisms": report["aggregates"],
        "columns": shown.columns,
        "rows": shown.rows,
        "result_digest": digest,
        "audit_entry_hash": audit_hash,
    });
    let signer = Signer::open_or_create(data_dir)?;
    Ok(json!({
        "format": BUNDLE_FORMAT,
        "release": release,
        "public_key": signer.public_hex(),
        "signature": signer.sign(&release),
    }))
}

/// `secretum release export QUERY_ID --out FILE`.
pub fn export(data_dir: &Path, query_id: i64, out: &Path) -> Result<()> {
    let wh = Warehouse::open(data_dir)?;
    drop(wh);
    let ledger = Ledger::open(data_dir)?;
    let b = bundle(data_dir, &ledger, query_id)?;
    let text = serde_json::to_string_pretty(&b).map_err(Error::internal)?;
    std::fs::write(out, text + "\n").map_err(|e| Error::io(out, e))?;
    println!("release of query {query_id} written to {} (signed with key {})", out.display(), b["public_key"].as_str().unwrap_or(""));
    Ok(())
}

/// `secretum release verify FILE --public-key KEY`: offline, with nothing but the file and key.
pub fn verify(file: &Path, public_key: &str) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let bundle: Value =
        serde_json::from_str(&text).map_err(|e| Error::BadRequest(format!("{}: not a JSON release bundle: {e}", file.display())))?;
    let release =
        signing::verify(&bundle, public_key).map_err(|why| Error::BadRequest(format!("{}: NOT VERIFIED: {why}", file.display())))?;
    let rows = release["rows"].as_array().map_or(0, Vec::len);
    println!("{}: verified", file.display());
    println!("  signature: valid Ed25519 signature by key {} over the whole release", public_key.trim());
    println!("  query {} of project {}, released at {}", release["query_id"], plain(&release["project"]), plain(&release["released_at"]));
    println!("  SQL: {}", plain(&release["sql"]));
    println!("  privacy loss charged: ε {}, δ {}", release["epsilon"], release["delta"]);
    for m in release["mechanisms"].as_array().into_iter().flatten() {
        println!("    {}: {} at ε {}", plain(&m["name"]), plain(&m["mechanism"]), m["epsilon"]);
    }
    println!("  released table: {rows} row(s), columns {}", release["columns"]);
    println!("  data version {}, audit entry {}", plain(&release["data_version"]), plain(&release["audit_entry_hash"]));
    Ok(())
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `secretum info`: the warehouse at a glance, with the public key bundles are checked with.
pub fn info(data_dir: &Path) -> Result<()> {
    let wh = Warehouse::open(data_dir)?;
    let meta = |k: &str| wh.catalog.meta(k).ok().flatten().unwrap_or_else(|| "-".into());
    let signer = Signer::open_or_create(data_dir)?;
    println!("warehouse:        {}", data_dir.display());
    println!("created:          {}", meta("created_at"));
    println!("key file:         {}", meta("key_file"));
    println!("key fingerprint:  {}", meta("key_fingerprint"));
    let patient = wh.schemas.tables.values().filter(|t| !t.public).count();
    println!("tables:           {patient} patient tables, {} public", wh.schemas.tables.len() - patient);
    println!("data version:     {}", wh.catalog.data_version()?);
    println!("Parquet files:    {}", wh.store.describe(data_dir));
    println!("signing key (Ed25519, public): {}", signer.public_hex());
    Ok(())
}
