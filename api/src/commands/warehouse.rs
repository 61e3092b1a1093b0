//! `secretum init|generate|ingest|tables`: the warehouse and its data.

use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use secretum_engine::ingest::{self, Format, IngestOptions, Progress};
use secretum_engine::pseudonym::Key;
use secretum_engine::store::StoreConfig;
use secretum_engine::{Result, Warehouse, synth};

/// Create a warehouse and its key.
pub fn init(data_dir: &Path, key_file: Option<&Path>, schemas: Option<&Path>, store: Option<&StoreConfig>) -> Result<()> {
    let report = Warehouse::init_on(data_dir, key_file, schemas, store)?;
    println!("initialized warehouse {}", report.data_dir.display());
    if let Some(s) = store {
        println!("Parquet files: in the object store {} (catalog, ledger and audit stay in {})", s.url, report.data_dir.display());
    }
    println!("pseudonymization key: {} (mode 0600; keep it safe, it is never stored in the warehouse's data)", report.key_file.display());
    println!("tables: {}", report.tables.join(", "));
    Ok(())
}

/// Write synthetic raw extracts, or an OMOP export.
pub fn generate(patients: u64, seed: u64, out: &Path, omop: Option<synth::OmopOptions>) -> Result<()> {
    let started = Instant::now();
    let bar = ProgressBar::new(patients).with_style(
        ProgressStyle::with_template("generating {bar:30} {pos}/{len} patients ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = match omop {
        None => synth::generate(patients, seed, out, Some(&|done| bar.set_position(done)))?,
        Some(o) => synth::generate_omop(patients, seed, out, o, Some(&|done| bar.set_position(done)))?,
    };
    bar.finish_and_clear();
    let what = match omop {
        None => "raw extracts".to_owned(),
        Some(o) => format!("an OMOP CDM v{} export", o.version.name()),
    };
    println!("generated {patients} synthetic patients (seed {seed}) as {what} in {:.1}s:", started.elapsed().as_secs_f64());
    for (table, path, rows) in &report.files {
        if table.starts_with("vocabulary/") {
            continue;
        }
        println!("  {table:<22} {rows:>10} rows  {}", path.display());
    }
    if let Some(dir) = report.files.iter().find(|(t, _, _)| t.starts_with("vocabulary/")).and_then(|(_, p, _)| p.parent()) {
        println!("  vocabulary (Athena format)      {}", dir.display());
    }
    Ok(())
}

/// How the CLI ingests (`secretum ingest`'s options).
pub struct IngestArgs {
    pub format: Option<Format>,
    pub cdm_version: Option<secretum_engine::omop::CdmVersion>,
    pub orphans: ingest::Orphans,
    pub allow_duplicate: bool,
}

/// Ingest one file into a table, with a progress bar.
pub fn ingest(data_dir: &Path, table: &str, file: &Path, key_file: Option<&Path>, args: &IngestArgs) -> Result<()> {
    let mut wh = Warehouse::open(data_dir)?;
    let key = wh.key(key_file)?;
    ingest_one(&mut wh, &key, table, file, args)
}

pub(crate) fn ingest_one(wh: &mut Warehouse, key: &Key, table: &str, file: &Path, args: &IngestArgs) -> Result<()> {
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
    opts.format = args.format;
    opts.allow_duplicate = args.allow_duplicate;
    opts.cdm_version = args.cdm_version;
    opts.orphans = args.orphans;
    opts.progress = Some(&on_progress);
    opts.actor = &user;
    let result = ingest::ingest(wh, key, &opts);
    bar.finish_and_clear();
    print_ingest(&result?);
    Ok(())
}

fn print_ingest(report: &ingest::IngestReport) {
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "ingested {} rows into {} from {} {} ({} file{}, {}) in {:.2}s, {:.0} rows/s",
        report.rows,
        report.table,
        if report.shape.starts_with(['a', 'e', 'i', 'o', 'u', 'O']) { "an" } else { "a" },
        report.shape,
        report.files.len(),
        if report.files.len() == 1 { "" } else { "s" },
        human_bytes(report.bytes),
        secs,
        report.rows as f64 / secs
    );
    if !report.dropped_cdm_columns.is_empty() {
        println!("  dropped (CDM columns not kept): {}", report.dropped_cdm_columns.join(", "));
    }
    if !report.dropped_other_columns.is_empty() {
        println!("  dropped (not OMOP CDM columns): {}", report.dropped_other_columns.join(", "));
    }
    if report.orphans_dropped > 0 {
        println!("  left out {} rows whose patient is not in person (--orphans drop)", report.orphans_dropped);
    }
    for n in &report.notes {
        println!("  note: {n}");
    }
}

/// Ingest every table of an export directory, in dependency order, with one progress bar.
pub fn ingest_dir(data_dir: &Path, dir: &Path, key_file: Option<&Path>, args: &IngestArgs) -> Result<()> {
    let mut wh = Warehouse::open(data_dir)?;
    let key = wh.key(key_file)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("ingesting {msg:<22} {bar:30} {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let on_progress = |table: &str, done: u64, total: u64| {
        bar.set_message(table.to_owned());
        bar.set_length(total);
        bar.set_position(done);
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "steward".into());
    let mut template = IngestOptions::new("", dir);
    template.cdm_version = args.cdm_version;
    template.orphans = args.orphans;
    template.actor = &user;
    let result = ingest::ingest_dir(&mut wh, &key, dir, &template, Some(&on_progress));
    bar.finish_and_clear();
    let report = result?;
    for r in &report.ingested {
        print_ingest(r);
    }
    for (path, why) in &report.skipped {
        println!("skipped {}: {why}", path.display());
    }
    Ok(())
}

/// Load an Athena vocabulary download.
pub fn vocabulary_load(data_dir: &Path, dir: &Path) -> Result<()> {
    let mut wh = Warehouse::open(data_dir)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {msg:<22} {bar:30} {bytes}/{total_bytes} ({binary_bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let on_progress = |table: &str, p: Progress| {
        bar.set_message(table.to_owned());
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_read);
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "steward".into());
    let result = secretum_engine::vocabulary::load(&mut wh, dir, &user, Some(&on_progress));
    bar.finish_and_clear();
    let report = result?;
    println!("loaded the vocabulary from {} in {:.1}s (public tables):", dir.display(), report.elapsed.as_secs_f64());
    for (table, rows, file) in &report.tables {
        println!("  {table:<22} {rows:>10} rows  {}", file.display());
    }
    if !report.missing.is_empty() {
        println!("  not in the download (left as they were): {}", report.missing.join(", "));
    }
    Ok(())
}

/// Search the concepts (public data: no project, no budget).
pub fn vocabulary_search(data_dir: &Path, query: &str, limit: usize) -> Result<()> {
    let wh = Warehouse::open(data_dir)?;
    let rt = crate::commands::runtime()?;
    let found = rt.block_on(secretum_engine::vocabulary::search(&wh, query, limit))?;
    if found.is_empty() {
        println!("no concept matches {query:?}");
        return Ok(());
    }
    println!("{:>12}  {:<12} {:<12} {:<3} {:<14} name", "concept_id", "domain", "vocabulary", "std", "code");
    for c in &found {
        println!(
            "{:>12}  {:<12} {:<12} {:<3} {:<14} {}",
            c.concept_id,
            c.domain_id,
            c.vocabulary_id,
            c.standard_concept.as_deref().unwrap_or(""),
            c.concept_code,
            c.concept_name
        );
    }
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
