//! Ingest: stream a raw extract, validate every row, pseudonymize, generalize, write zstd
//! Parquet into a staging directory, then commit all files in one catalog transaction.
//!
//! Nothing is visible before the commit: queries read only the files the catalog lists. On any
//! invalid row the staging directory is removed and nothing is committed. A crash (kill -9)
//! leaves a staging directory behind, which the next ingest sweeps (see [`sweep_staging`]).

pub mod convert;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use arrow::array::{Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::catalog::{FileEntry, NewIngest};
use crate::error::{Error, IoContext, Result};
use crate::omop::{self, CdmVersion, Shape};
use crate::pseudonym::Key;
use crate::store::Store;
use crate::warehouse::Warehouse;
use convert::{Converter, RowFields, UnitCheck};

/// Rows per Arrow batch handed from the validating thread to the Parquet writer.
pub const BATCH_ROWS: usize = 64 * 1024;
/// Rows per Parquet row group: large enough for good compression and scan speed, small enough
/// that one row group of a wide table stays within tens of MiB in memory.
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;
/// Rows per Parquet file before the writer starts another one.
pub const FILE_ROWS: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
    Ndjson,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "csv" | "tsv" | "txt" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }

    /// Guess from the file name's extension.
    pub fn from_path(path: &Path) -> Option<Format> {
        Format::parse(path.extension()?.to_str()?)
    }
}

/// Progress of a running ingest.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub rows: u64,
}

/// What to do with a row whose patient is not in `person`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Orphans {
    /// The ingest fails, naming the rows (the default: an orphan usually means `person` was not
    /// loaded, or loaded from another extract).
    #[default]
    Reject,
    /// The rows are left out, and counted in the report.
    Drop,
}

pub struct IngestOptions<'a> {
    pub table: &'a str,
    pub file: &'a Path,
    pub format: Option<Format>,
    pub allow_duplicate: bool,
    pub actor: &'a str,
    pub progress: Option<&'a dyn Fn(Progress)>,
    /// Test hook: fail after this many batches were written, as a crash or a full disk would.
    pub fail_after_batches: Option<usize>,
    /// The CDM version of an OMOP export (detected from its columns when not given).
    pub cdm_version: Option<CdmVersion>,
    pub orphans: Orphans,
    /// Replace the table's files instead of adding to them (the vocabularies: a new release
    /// replaces the previous one).
    pub replace: bool,
    /// Whether `"` quotes fields in a CSV file (not in the vocabularies' tab-separated files,
    /// whose names may hold a `"`).
    pub quoting: bool,
}

impl<'a> IngestOptions<'a> {
    pub fn new(table: &'a str, file: &'a Path) -> Self {
        IngestOptions {
            table,
            file,
            format: None,
            allow_duplicate: false,
            actor: "steward",
            progress: None,
            fail_after_batches: None,
            cdm_version: None,
            orphans: Orphans::Reject,
            replace: false,
            quoting: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IngestReport {
    pub id: String,
    pub table: String,
    pub rows: u64,
    pub files: Vec<FileEntry>,
    pub bytes: u64,
    pub source_sha256: String,
    pub elapsed: Duration,
    /// What the file was read as (a raw extract, an OMOP export of some version).
    pub shape: String,
    /// The CDM version of an OMOP export, when given or shown by its columns.
    pub cdm_version: Option<CdmVersion>,
    /// CDM columns of the file that this warehouse does not keep (dropped).
    pub dropped_cdm_columns: Vec<String>,
    /// Columns of the file that are not in the CDM (a site's additions; dropped).
    pub dropped_other_columns: Vec<String>,
    /// Rows left out because their patient is not in `person` (`--orphans drop`).
    pub orphans_dropped: u64,
    /// Remarks for the steward.
    pub notes: Vec<String>,
}

/// A file's header (names as written) and CSV delimiter, read without reading the rest.
fn peek_header(path: &Path, format: Format) -> Result<(Vec<String>, u8)> {
    let unreadable = |reason: String| Error::UnreadableInput { file: path.display().to_string(), reason };
    match format {
        Format::Csv => {
            let mut first = Vec::new();
            let file = File::open(path).at(path)?;
            let mut reader = BufReader::new(file);
            std::io::BufRead::read_until(&mut reader, b'\n', &mut first).at(path)?;
            if first.is_empty() {
                return Err(unreadable("the file is empty: no header".into()));
            }
            // Comma or tab (or semicolon, or pipe): whichever the header line holds most of.
            let count = |b: u8| first.iter().filter(|c| **c == b).count();
            let delimiter = [b',', b'\t', b';', b'|'].into_iter().max_by_key(|b| count(*b)).unwrap_or(b',');
            let mut r = csv::ReaderBuilder::new().has_headers(false).delimiter(delimiter).from_reader(first.as_slice());
            let header = match r.byte_records().next() {
                Some(Ok(rec)) => rec.iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect(),
                _ => return Err(unreadable("cannot read the CSV header".into())),
            };
            Ok((header, delimiter))
        }
        Format::Parquet => {
            let file = File::open(path).at(path)?;
            let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| unreadable(format!("not a readable Parquet file: {e}")))?;
            Ok((builder.schema().fields().iter().map(|f| f.name().clone()).collect(), b','))
        }
        Format::Ndjson => {
            let file = File::open(path).at(path)?;
            let mut first = String::new();
            std::io::BufRead::read_line(&mut BufReader::new(file), &mut first).at(path)?;
            let keys = match serde_json::from_str::<serde_json::Value>(&first) {
                Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
                _ => Vec::new(),
            };
            Ok((keys, b','))
        }
    }
}

/// The pseudonyms of the patients a table holds (its committed files' privacy-unit column).
pub fn stored_units(wh: &Warehouse, table: &str) -> Result<std::collections::HashSet<i64>> {
    Ok(stored_units_of(wh, table)?.0)
}

/// [`stored_units`], and the files they were read from.
fn stored_units_of(wh: &Warehouse, table: &str) -> Result<(std::collections::HashSet<i64>, Vec<String>)> {
    let policy = wh.schemas.get(table)?;
    let unit = policy.privacy_unit().name.clone();
    let mut out = std::collections::HashSet::new();
    fn units_of<R: parquet::file::reader::ChunkReader + 'static>(
        reader: R,
        unit: &str,
        out: &mut std::collections::HashSet<i64>,
    ) -> Result<()> {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(reader)?;
        let Some(index) = builder.schema().fields().iter().position(|c| *c.name() == unit) else { return Ok(()) };
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [index]);
        for batch in builder.with_projection(mask).build()? {
            let batch = batch?;
            if let Some(ids) = batch.column(0).as_any().downcast_ref::<arrow::array::Int64Array>() {
                out.extend(ids.iter().flatten());
            }
        }
        Ok(())
    }
    let files = wh.catalog.files(table)?;
    for f in &files {
        match &wh.store {
            Store::Local => {
                let path = wh.layout.root.join(&f.path);
                units_of(File::open(&path).at(&path)?, &unit, &mut out)?
            }
            Store::S3(s) => units_of(s.read(&f.path)?, &unit, &mut out)?,
        }
    }
    Ok((out, files.into_iter().map(|f| f.path).collect()))
}

/// Ingest one raw extract or OMOP export into one table.
pub fn ingest(wh: &mut Warehouse, key: &Key, opts: &IngestOptions<'_>) -> Result<IngestReport> {
    let started = Instant::now();
    let policy = wh.schemas.get(opts.table)?.clone();
    let format = match opts.format.or_else(|| Format::from_path(opts.file)) {
        Some(f) => f,
        None => {
            return Err(Error::BadRequest(format!(
                "{}: cannot tell the format from the name; pass --format csv|parquet|ndjson",
                opts.file.display()
            )));
        }
    };
    let bytes_total = std::fs::metadata(opts.file).at(opts.file)?.len();
    let (written_header, delimiter) = peek_header(opts.file, format)?;
    let (header, version) = omop::normalize_header(opts.table, &written_header, opts.cdm_version);
    let shape = match omop::detect(&policy, &header) {
        Some(Shape::Omop(_)) => Shape::Omop(version),
        Some(s) => s,
        None => {
            let unit = policy.privacy_unit();
            return Err(Error::UnreadableInput {
                file: opts.file.display().to_string(),
                reason: format!(
                    "cannot tell what it is: a raw extract names its patients in `{}`, an OMOP export in `{}`; the header has neither",
                    unit.source.as_deref().unwrap_or(&unit.name),
                    unit.name
                ),
            });
        }
    };
    let input = match shape {
        Shape::Extract => policy.clone(),
        Shape::Omop(_) => omop::input_policy(&policy),
    };
    sweep_staging(wh)?;

    let shown_name = opts.file.display().to_string();
    let mut notes = Vec::new();
    let mut conv = Converter::new(&input, key, &shown_name);
    let (dropped_cdm, dropped_other) = match shape {
        Shape::Omop(_) => omop::dropped(opts.table, &header, &conv.raw_names),
        Shape::Extract => (Vec::new(), Vec::new()),
    };
    // Each row's patient: unique in `person`, present in `person` for every other table.
    let mut unique_over = None;
    if !policy.public {
        if opts.table == "person" {
            let (stored, checked) = stored_units_of(wh, "person")?;
            unique_over = Some(checked);
            conv = conv.with_unit_check(UnitCheck::Unique { seen: stored.into_iter().map(|u| (u, None)).collect() });
        } else if wh.schemas.tables.contains_key("person") {
            let known = stored_units(wh, "person")?;
            if known.is_empty() {
                notes.push("`person` is empty: orphan rows cannot be checked (ingest person first)".into());
            } else {
                let known = known.into_iter().collect();
                conv = conv.with_unit_check(UnitCheck::Orphans { known, drop: opts.orphans == Orphans::Drop });
            }
        }
    }

    let id = new_ingest_id();
    let staging = wh.layout.staging().join(&id);
    std::fs::create_dir_all(&staging).at(&staging)?;
    std::fs::write(staging.join("pid"), std::process::id().to_string()).at(&staging)?;

    let lenient = matches!(shape, Shape::Omop(_));
    let result = (|| -> Result<(String, Vec<(PathBuf, u64, u64)>)> {
        let (tx, rx) = sync_channel::<RecordBatch>(2);
        let writer_dir = staging.clone();
        let prefix = id.clone();
        let fail_after = opts.fail_after_batches;
        let writer = std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || write_parquet(rx, &writer_dir, &prefix, fail_after))
            .map_err(|e| Error::io(&staging, e))?;
        let mut sink = BatchSink { tx: Some(tx), rows: 0 };
        let columns = Columns { header: &header, lenient, delimiter };
        // The content's digest (for the duplicate check) is computed by a second reader on the
        // other core while the file is parsed; a file changed during the ingest gives a digest of
        // some of its content, which only weakens the duplicate check, never what is stored.
        let digest = {
            let path = opts.file.to_owned();
            std::thread::Builder::new().name("digest".into()).spawn(move || hash_file(&path)).map_err(|e| Error::io(opts.file, e))?
        };
        let read = match format {
            Format::Csv => read_csv(opts, bytes_total, &columns, &mut conv, &mut sink),
            Format::Ndjson => read_ndjson(opts, bytes_total, &mut conv, &mut sink),
            Format::Parquet => read_parquet(opts, bytes_total, &columns, &mut conv, &mut sink),
        };
        drop(sink.tx.take());
        let written = writer.join().map_err(|_| Error::internal("the Parquet writer thread panicked"))?;
        read?;
        let sha = digest.join().map_err(|_| Error::internal("the digest thread panicked"))??;
        if conv.failed() {
            return Err(Error::InvalidInput { shown: std::mem::take(&mut conv.shown), more: conv.more });
        }
        Ok((sha, written?))
    })();
    let (sha, written) = match result {
        Ok(ok) => ok,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };

    let unit_rows_max = conv.unit_rows_max();
    let (unit_rows_listed_above, listed) = match conv.unit_rows_listing() {
        Some((above, listed)) => (Some(above), listed),
        None => (None, Vec::new()),
    };
    // Move the files next to the table's other files (on an object store: upload them under the
    // staging prefix, then copy them next to the table's other objects), then make them visible
    // in one transaction.
    let commit = (|| -> Result<Vec<FileEntry>> {
        // The duplicate check runs inside the commit transaction (see Catalog::commit_ingest).
        let table_dir = wh.layout.table_dir(opts.table);
        if wh.store.is_local() {
            std::fs::create_dir_all(&table_dir).at(&table_dir)?;
        }
        let mut files = Vec::new();
        for (path, rows, bytes) in &written {
            let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
            let rel = Path::new("tables").join(opts.table).join(&name);
            match &wh.store {
                Store::Local => {
                    let dest = table_dir.join(&name);
                    std::fs::rename(path, &dest).at(&dest)?;
                }
                Store::S3(s) => {
                    let staged = format!("staging/{id}/{}", name.to_string_lossy());
                    s.upload(path, &staged)?;
                    s.copy(&staged, &rel.to_string_lossy())?;
                }
            }
            files.push(FileEntry {
                path: rel.to_string_lossy().into_owned(),
                ingest_id: id.clone(),
                rows: *rows,
                bytes: *bytes,
                unit_rows_max,
                unit_rows_listed_above,
                unit_disjoint: unique_over.is_some(),
            });
        }
        if wh.store.is_local() {
            File::open(&table_dir).and_then(|d| d.sync_all()).at(&table_dir)?;
        }
        wh.catalog.commit_ingest(&NewIngest {
            id: &id,
            table: opts.table,
            source_path: &shown_name,
            source_sha256: &sha,
            actor: opts.actor,
            allow_duplicate: opts.allow_duplicate,
            replace: opts.replace,
            files: &files,
            listed: &listed,
            unique_over: unique_over.as_deref(),
        })?;
        Ok(files)
    })();
    match commit {
        Ok(files) => {
            remove_staged(wh, &id);
            let _ = std::fs::remove_dir_all(&staging);
            Ok(IngestReport {
                id,
                table: opts.table.to_owned(),
                rows: files.iter().map(|f| f.rows).sum(),
                bytes: files.iter().map(|f| f.bytes).sum(),
                files,
                source_sha256: sha,
                elapsed: started.elapsed(),
                shape: shape.name(),
                cdm_version: match shape {
                    Shape::Omop(v) => v,
                    Shape::Extract => None,
                },
                dropped_cdm_columns: dropped_cdm,
                dropped_other_columns: dropped_other,
                orphans_dropped: conv.orphans_dropped,
                notes,
            })
        }
        Err(e) => {
            remove_uncommitted(wh, &id, &staging);
            Err(e)
        }
    }
}

/// What `ingest --dir` did.
#[derive(Debug, Clone, Default)]
pub struct DirReport {
    /// The tables ingested, in order.
    pub ingested: Vec<IngestReport>,
    /// Files left aside, and why (vocabulary files, files already ingested, unknown names).
    pub skipped: Vec<(PathBuf, String)>,
}

/// The order tables are ingested in: `person` first (every other table's rows are checked
/// against it), visits before what refers to them, then the rest by name.
fn dependency_rank(table: &str) -> (u8, String) {
    let rank = match table {
        "person" => 0,
        "observation_period" => 1,
        "visit_occurrence" => 2,
        "visit_detail" => 3,
        _ => 4,
    };
    (rank, table.to_owned())
}

/// The table a file of an export holds, from its name (`PERSON.csv`, `condition_occurrence.tsv`,
/// `measurement.parquet`).
pub fn table_of(path: &Path) -> Option<(String, Format)> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let (stem, ext) = name.rsplit_once('.')?;
    Some((stem.to_owned(), Format::parse(ext)?))
}

/// Ingest every recognised table of a directory (an OMOP export), in dependency order. Each
/// table commits on its own; the first failure stops the run (the tables before it stay
/// committed, the report says which). Files already ingested are skipped.
pub fn ingest_dir(
    wh: &mut Warehouse,
    key: &Key,
    dir: &Path,
    template: &IngestOptions<'_>,
    progress: Option<&dyn Fn(&str, u64, u64)>,
) -> Result<DirReport> {
    let mut report = DirReport::default();
    let mut found: Vec<(String, PathBuf, Format)> = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).at(dir)?.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    entries.sort();
    for path in entries {
        match table_of(&path) {
            Some((table, _)) if crate::vocabulary::TABLES.contains(&table.as_str()) => {
                report.skipped.push((path, "a vocabulary file: load it with `secretum vocabulary load`".into()))
            }
            Some((table, format)) if wh.schemas.tables.get(&table).is_some_and(|p| !p.public) => {
                if found.iter().any(|(t, _, _)| *t == table) {
                    return Err(Error::BadRequest(format!("{}: two files hold table `{table}`; ingest them one by one", dir.display())));
                }
                found.push((table, path, format))
            }
            _ => report.skipped.push((path, "not a table of this warehouse's schemas".into())),
        }
    }
    if found.is_empty() {
        return Err(Error::BadRequest(format!(
            "{}: no file named after a table of this warehouse (PERSON.csv, condition_occurrence.csv, ...)",
            dir.display()
        )));
    }
    found.sort_by_key(|(t, _, _)| dependency_rank(t));
    let total: u64 = found.iter().map(|(_, p, _)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    let mut done = 0u64;
    // One export has one version: the first file that shows it sets it for the others.
    let mut version = template.cdm_version;
    for (table, path, format) in &found {
        let already = wh.catalog.ingests()?;
        let sha = hash_file(path)?;
        if already.iter().any(|i| i.table == *table && i.source_sha256 == sha) {
            report.skipped.push((path.clone(), format!("already ingested into `{table}`")));
            done += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            continue;
        }
        let shown = |p: Progress| {
            if let Some(f) = progress {
                f(table, done + p.bytes_read, total)
            }
        };
        let opts = IngestOptions {
            table,
            file: path,
            format: Some(*format),
            allow_duplicate: false,
            actor: template.actor,
            progress: Some(&shown),
            fail_after_batches: None,
            cdm_version: version,
            orphans: template.orphans,
            replace: false,
            quoting: template.quoting,
        };
        match ingest(wh, key, &opts) {
            Ok(r) => {
                version = version.or(r.cdm_version);
                report.ingested.push(r)
            }
            Err(e) => {
                let committed: Vec<&str> = report.ingested.iter().map(|r| r.table.as_str()).collect();
                let before = if committed.is_empty() {
                    "nothing was committed".to_owned()
                } else {
                    format!("committed before it: {}", committed.join(", "))
                };
                return Err(Error::BadRequest(format!("`{table}` ({}) was not ingested ({before}):\n{e}", path.display())));
            }
        }
        done += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    Ok(report)
}

/// Remove an ingest's staged objects (an object store's staging prefix), committed or not: the
/// catalog names only the copies under `tables/`.
fn remove_staged(wh: &Warehouse, id: &str) {
    if let Store::S3(s) = &wh.store {
        for rel in s.list(&format!("staging/{id}/")).unwrap_or_default() {
            let _ = s.remove(&rel);
        }
    }
}

/// Remove what an ingest that did not commit left behind: its staging directory, and any of its
/// files already moved into a table directory but not named by the catalog.
fn remove_uncommitted(wh: &Warehouse, id: &str, staging: &Path) {
    if let Store::S3(s) = &wh.store {
        remove_staged(wh, id);
        for rel in s.list("tables/").unwrap_or_default() {
            let name = rel.rsplit('/').next().unwrap_or("");
            if name.starts_with(id) && !wh.catalog.is_referenced(&rel).unwrap_or(true) {
                let _ = s.remove(&rel);
            }
        }
    }
    if let Ok(tables) = std::fs::read_dir(wh.layout.tables()) {
        for table in tables.flatten() {
            for file in std::fs::read_dir(table.path()).into_iter().flatten().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with(id) {
                    let rel = Path::new("tables").join(table.file_name()).join(&name);
                    if !wh.catalog.is_referenced(&rel.to_string_lossy()).unwrap_or(true) {
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(staging);
}

/// Clean up after ingests that died (kill -9, power loss): a staging directory whose process is
/// gone. Ingests still running (their pid is alive) are left alone.
pub fn sweep_staging(wh: &Warehouse) -> Result<usize> {
    let dir = wh.layout.staging();
    let mut swept = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if !running(&path) {
            remove_uncommitted(wh, &entry.file_name().to_string_lossy(), &path);
            swept += 1;
        }
    }
    // Staged objects of an ingest whose staging directory is gone (the node's disk was cleaned)
    // or whose process is dead.
    if let Store::S3(s) = &wh.store {
        let mut ids: Vec<String> = s.list("staging/")?.iter().filter_map(|r| r.split('/').nth(1).map(str::to_owned)).collect();
        ids.dedup();
        for id in ids {
            let local = dir.join(&id);
            if !running(&local) {
                remove_uncommitted(wh, &id, &local);
                swept += 1;
            }
        }
    }
    Ok(swept)
}

/// Whether the ingest of a staging directory is still running (its pid file names a live process
/// other than this one).
fn running(staging: &Path) -> bool {
    let pid = std::fs::read_to_string(staging.join("pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
    pid.is_some_and(|p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists())
}

fn new_ingest_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"), hex::encode(b))
}

/// Hands full batches to the writer thread.
struct BatchSink {
    tx: Option<std::sync::mpsc::SyncSender<RecordBatch>>,
    rows: u64,
}

impl BatchSink {
    fn flush(&mut self, conv: &mut Converter) -> Result<()> {
        if conv.rows_buffered() == 0 {
            return Ok(());
        }
        // Once a row is invalid nothing will be committed: stop writing, keep validating.
        if let Some(batch) = conv.finish_batch()? {
            self.rows += batch.num_rows() as u64;
            if let Some(tx) = &self.tx
                && tx.send(batch).is_err()
            {
                // The writer stopped on an error; it is reported when the writer is joined.
                self.tx = None;
            }
        }
        Ok(())
    }

    fn maybe_flush(&mut self, conv: &mut Converter) -> Result<()> {
        if conv.rows_buffered() >= BATCH_ROWS { self.flush(conv) } else { Ok(()) }
    }
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("secretum".into())
        .build()
}

/// The writer thread: batches in, fsynced Parquet files out (path, rows, bytes).
fn write_parquet(rx: Receiver<RecordBatch>, dir: &Path, prefix: &str, fail_after: Option<usize>) -> Result<Vec<(PathBuf, u64, u64)>> {
    let mut done = Vec::new();
    let mut current: Option<(PathBuf, ArrowWriter<File>, u64)> = None;
    let mut n = 0usize;
    let close = |(path, w, rows): (PathBuf, ArrowWriter<File>, u64), done: &mut Vec<(PathBuf, u64, u64)>| -> Result<()> {
        let file = w.into_inner()?;
        file.sync_all().at(&path)?;
        let bytes = file.metadata().at(&path)?.len();
        done.push((path, rows, bytes));
        Ok(())
    };
    for batch in rx {
        if fail_after.is_some_and(|k| n >= k) {
            return Err(Error::io(dir, std::io::Error::other("injected failure while writing (test hook)")));
        }
        n += 1;
        if current.as_ref().is_some_and(|(_, _, rows)| *rows >= FILE_ROWS) {
            close(current.take().expect("checked above"), &mut done)?;
        }
        if current.is_none() {
            let path = dir.join(format!("{prefix}-{:05}.parquet", done.len()));
            let file = File::create(&path).at(&path)?;
            let writer = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties()))?;
            current = Some((path, writer, 0));
        }
        let (_, writer, rows) = current.as_mut().expect("opened above");
        writer.write(&batch)?;
        *rows += batch.num_rows() as u64;
    }
    if let Some(c) = current.take() {
        close(c, &mut done)?;
    }
    File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    Ok(done)
}

/// A reader that hashes and counts what passes through it.
/// A reader that counts what it reads (for progress).
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// How a file's columns are read: its normalized header, whether columns the table does not
/// read are dropped (an OMOP export: reported by the caller) or refused (a raw extract: an
/// undeclared column may be an identifier nobody classified), and the CSV delimiter.
struct Columns<'a> {
    header: &'a [String],
    lenient: bool,
    delimiter: u8,
}

/// How the header of the input maps onto the schema's raw columns.
fn map_header(columns: &Columns<'_>, conv: &Converter, table: &str) -> Result<Vec<Option<usize>>> {
    let header = columns.header;
    let mut problems = Vec::new();
    for (i, h) in header.iter().enumerate() {
        if !columns.lenient && !conv.raw_names.iter().any(|n| n == h) {
            problems.push(format!(
                "column `{h}` is not in the schema of `{table}`: declare it (with its privacy role) or remove it from the extract"
            ));
        }
        if header[..i].contains(h) {
            problems.push(format!("column `{h}` appears twice in the header"));
        }
    }
    let map: Vec<Option<usize>> = conv.raw_names.iter().map(|n| header.iter().position(|h| h == n)).collect();
    for (name, pos) in conv.raw_names.iter().zip(&map) {
        if pos.is_none() && !conv.nullable_raw.contains(name) {
            problems.push(format!("required column `{name}` is missing from the header"));
        }
    }
    if problems.is_empty() {
        Ok(map)
    } else {
        Err(Error::UnreadableInput {
            file: format!("the file for `{table}`"),
            reason: format!("it does not match the table's schema:\n  {}", problems.join("\n  ")),
        })
    }
}

struct CsvRow<'a> {
    record: &'a csv::ByteRecord,
    map: &'a [Option<usize>],
}

impl RowFields for CsvRow<'_> {
    fn get(&self, raw: usize) -> Option<&[u8]> {
        self.record.get(self.map[raw]?)
    }
}

fn read_csv(opts: &IngestOptions<'_>, bytes_total: u64, columns: &Columns<'_>, conv: &mut Converter, sink: &mut BatchSink) -> Result<()> {
    let file = File::open(opts.file).at(opts.file)?;
    let counting = Counting { inner: file, read: 0 };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .delimiter(columns.delimiter)
        .quoting(opts.quoting)
        .buffer_capacity(1 << 20)
        .from_reader(BufReader::with_capacity(1 << 20, counting));
    reader.byte_headers().map_err(|e| Error::UnreadableInput {
        file: opts.file.display().to_string(),
        reason: format!("cannot read the CSV header: {e}"),
    })?;
    let header = columns.header;
    let map = map_header(columns, conv, opts.table)?;
    let mut record = csv::ByteRecord::new();
    let mut rows = 0u64;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                conv.row_problem(line, None, format!("malformed CSV: {}", e.kind_summary()));
                break;
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(rows + 2);
        rows += 1;
        if record.len() != header.len() {
            conv.row_problem(line, None, format!("wrong number of columns: expected {}, found {}", header.len(), record.len()));
            continue;
        }
        conv.push_row(&CsvRow { record: &record, map: &map }, line);
        if conv.rows_buffered() >= BATCH_ROWS {
            sink.flush(conv)?;
            if let Some(p) = opts.progress {
                p(Progress { bytes_read: reader.get_ref().get_ref().read, bytes_total, rows });
            }
        }
    }
    sink.flush(conv)?;
    let inner = reader.into_inner().into_inner();
    if let Some(p) = opts.progress {
        p(Progress { bytes_read: inner.read, bytes_total, rows });
    }
    Ok(())
}

trait CsvErrorSummary {
    fn kind_summary(&self) -> String;
}

impl CsvErrorSummary for csv::Error {
    fn kind_summary(&self) -> String {
        match self.kind() {
            csv::ErrorKind::Io(e) => format!("read error: {e}"),
            csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".into(),
            _ => "unreadable record".into(),
        }
    }
}

/// Rows of an Arrow batch whose raw columns were cast to strings.
struct ArrowRow<'a> {
    columns: &'a [Option<StringArray>],
    row: usize,
}

impl RowFields for ArrowRow<'_> {
    fn get(&self, raw: usize) -> Option<&[u8]> {
        let col = self.columns[raw].as_ref()?;
        if col.is_null(self.row) { None } else { Some(col.value(self.row).as_bytes()) }
    }
}

/// Feed one Arrow batch (columns named as in the extract) to the converter.
fn push_arrow_batch(batch: &RecordBatch, map: &[Option<usize>], conv: &mut Converter, first_line: u64) -> Result<()> {
    let columns: Vec<Option<StringArray>> = map
        .iter()
        .map(|pos| -> Result<Option<StringArray>> {
            let Some(pos) = pos else { return Ok(None) };
            let col = arrow::compute::cast(batch.column(*pos), &DataType::Utf8)?;
            Ok(col.as_any().downcast_ref::<StringArray>().cloned())
        })
        .collect::<Result<_>>()?;
    for row in 0..batch.num_rows() {
        conv.push_row(&ArrowRow { columns: &columns, row }, first_line + row as u64);
    }
    Ok(())
}

fn read_ndjson(opts: &IngestOptions<'_>, bytes_total: u64, conv: &mut Converter, sink: &mut BatchSink) -> Result<()> {
    let file = File::open(opts.file).at(opts.file)?;
    let fields: Vec<Field> = conv.raw_names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect();
    let map: Vec<Option<usize>> = (0..conv.raw_names.len()).map(Some).collect();
    let mut reader = arrow::json::ReaderBuilder::new(Arc::new(Schema::new(fields)))
        .with_coerce_primitive(true)
        .with_strict_mode(true)
        .with_batch_size(BATCH_ROWS)
        .build(BufReader::with_capacity(1 << 20, file))?;
    let mut line = 1u64;
    let mut rows = 0u64;
    for batch in reader.by_ref() {
        let batch = batch
            .map_err(|e| Error::UnreadableInput { file: opts.file.display().to_string(), reason: format!("around line {line}: {e}") })?;
        push_arrow_batch(&batch, &map, conv, line)?;
        line += batch.num_rows() as u64;
        rows += batch.num_rows() as u64;
        sink.maybe_flush(conv)?;
        if let Some(p) = opts.progress {
            p(Progress { bytes_read: 0, bytes_total, rows });
        }
    }
    sink.flush(conv)?;
    // Required keys absent from an object show up as missing values of that row.
    Ok(())
}

fn read_parquet(
    opts: &IngestOptions<'_>,
    bytes_total: u64,
    columns: &Columns<'_>,
    conv: &mut Converter,
    sink: &mut BatchSink,
) -> Result<()> {
    let file = File::open(opts.file).at(opts.file)?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::UnreadableInput { file: opts.file.display().to_string(), reason: format!("not a readable Parquet file: {e}") })?
        .with_batch_size(BATCH_ROWS);
    let map = map_header(columns, conv, opts.table)?;
    let mut row = 1u64;
    for batch in builder.build()? {
        let batch = batch?;
        push_arrow_batch(&batch, &map, conv, row)?;
        row += batch.num_rows() as u64;
        sink.maybe_flush(conv)?;
        if let Some(p) = opts.progress {
            p(Progress { bytes_read: 0, bytes_total, rows: row - 1 });
        }
    }
    sink.flush(conv)?;
    Ok(())
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).at(path)?;
    Ok(hex::encode(hasher.finalize()))
}
