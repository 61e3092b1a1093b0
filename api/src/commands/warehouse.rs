//! `secretum init|generate|ingest|tables`: the warehouse and its data.

use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use secretum_engine::ingest::{self, Format, IngestOptions, Progress};
use secretum_engine::pseudonym::Key;
use secretum_engine::{Result, Warehouse, synth};

/// Create a warehouse and its key.
pub fn init(data_dir: &Path, key_file: Option<&Path>, schemas: Option<&Path>) -> Result<()> {
    let report = Warehouse::init(data_dir, key_file, schemas)?;
    println!("initialized warehouse {}", report.data_dir.display());
    println!("pseudonymization key: {} (mode 0600; keep it safe, it is never stored in the warehouse's data)", report.key_file.display());
    println!("tables: {}", report.tables.join(", "));
    Ok(())
}

/// Write synthetic raw extracts.
pub fn generate(patients: u64, seed: u64, out: &Path) -> Result<()> {
    let started = Instant::now();
    let bar = ProgressBar::new(patients).with_style(
        ProgressStyle::with_template("generating {bar:30} {pos}/{len} patients ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = synth::generate(patients, seed, out, Some(&|done| bar.set_position(done)))?;
    bar.finish_and_clear();
    println!("generated {patients} synthetic patients (seed {seed}) in {:.1}s:", started.elapsed().as_secs_f64());
    for (table, path, rows) in &report.files {
        println!("  {table:<22} {rows:>10} rows  {}", path.display());
    }
    Ok(())
}

/// Ingest one file into a table, with a progress bar.
pub fn ingest(
    data_dir: &Path,
    table: &str,
    file: &Path,
    format: Option<Format>,
    key_file: Option<&Path>,
    allow_duplicate: bool,
) -> Result<()> {
    let mut wh = Warehouse::open(data_dir)?;
    let key = wh.key(key_file)?;
    ingest_one(&mut wh, &key, table, file, format, allow_duplicate)
}

pub(crate) fn ingest_one(
    wh: &mut Warehouse,
    key: &Key,
    table: &str,
    file: &Path,
    format: Option<Format>,
    allow_duplicate: bool,
) -> Result<()> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("ingesting {msg:<20} {bar:30} {bytes}/{total_bytes} ({binary_bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(table.to_owned());
    let on_progress = |p: Progress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_read);
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "steward".into());
    let mut opts = IngestOptions::new(table, file);
    opts.format = format;
    opts.allow_duplicate = allow_duplicate;
    opts.progress = Some(&on_progress);
    opts.actor = &user;
    let result = ingest::ingest(wh, key, &opts);
    bar.finish_and_clear();
    let report = result?;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "ingested {} rows into {} ({} file{}, {}) in {:.2}s, {:.0} rows/s",
        report.rows,
        report.table,
        report.files.len(),
        if report.files.len() == 1 { "" } else { "s" },
        human_bytes(report.bytes),
        secs,
        report.rows as f64 / secs
    );
    Ok(())
}

/// Files, rows and bytes per table (the steward's local view).
pub fn tables(data_dir: &Path) -> Result<()> {
    print_tables(&Warehouse::open(data_dir)?)
}

pub(crate) fn print_tables(wh: &Warehouse) -> Result<()> {
    let summary = wh.catalog.summary(wh.schemas.tables.keys().cloned())?;
    println!("{:<22} {:>6} {:>12} {:>12}", "table", "files", "rows", "bytes");
    for s in &summary {
        println!("{:<22} {:>6} {:>12} {:>12}", s.table, s.files, s.rows, human_bytes(s.bytes));
    }
    let (files, rows, bytes) = summary.iter().fold((0, 0, 0), |a, s| (a.0 + s.files, a.1 + s.rows, a.2 + s.bytes));
    println!("{:<22} {:>6} {:>12} {:>12}", "total", files, rows, human_bytes(bytes));
    Ok(())
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
