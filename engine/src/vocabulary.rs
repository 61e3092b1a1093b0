//! The OMOP standardized vocabularies as public reference data.
//!
//! `concept`, `concept_ancestor`, `concept_relationship`, ... hold no patient: they are loaded
//! as they come from an Athena download (tab-separated, unquoted, dates YYYYMMDD), each table
//! replacing the previous release in one catalog transaction. Researchers read them row by row
//! ([`search`]), join them to patient tables in SQL at no privacy cost, and their concept lists
//! make concept-id columns public domains ([`resolve_domains`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::prelude::{col, lit};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ingest::{self, IngestOptions, Progress};
use crate::pseudonym::Key;
use crate::schema::{Domain, DomainValue, MAX_DOMAIN, Schemas};
use crate::warehouse::Warehouse;

/// The vocabulary tables, in the order they are loaded.
pub const TABLES: [&str; 9] = [
    "concept",
    "concept_ancestor",
    "concept_relationship",
    "concept_synonym",
    "vocabulary",
    "domain",
    "concept_class",
    "relationship",
    "drug_strength",
];

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// (table, rows, file) for every table loaded.
    pub tables: Vec<(String, u64, PathBuf)>,
    /// Vocabulary tables without a file in the directory (left as they were).
    pub missing: Vec<String>,
    pub elapsed: Duration,
}

/// The vocabulary files of a directory: `CONCEPT.csv`, `concept.tsv`, ... (any case; `.csv`,
/// `.tsv` or `.txt`).
pub fn files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_ascii_lowercase();
        let Some((stem, ext)) = name.rsplit_once('.') else { continue };
        if path.is_file() && matches!(ext, "csv" | "tsv" | "txt") && TABLES.contains(&stem) {
            out.insert(stem.to_owned(), path);
        }
    }
    Ok(out)
}

/// Load every vocabulary file of `dir`, each replacing its table. `progress` is told which
/// table is loading and how far it is.
pub fn load(wh: &mut Warehouse, dir: &Path, actor: &str, progress: Option<&dyn Fn(&str, Progress)>) -> Result<LoadReport> {
    let started = Instant::now();
    let found = files(dir)?;
    if !found.contains_key("concept") {
        return Err(Error::BadRequest(format!(
            "{}: no CONCEPT file (CONCEPT.csv, as an Athena download has it); nothing was loaded",
            dir.display()
        )));
    }
    // Public tables hold no identifier: the key is never used to pseudonymize anything here.
    let key = Key::generate();
    let mut tables = Vec::new();
    let mut missing = Vec::new();
    for table in TABLES {
        let Some(file) = found.get(table) else {
            missing.push(table.to_owned());
            continue;
        };
        if !wh.schemas.tables.get(table).is_some_and(|p| p.public) {
            return Err(Error::BadRequest(format!("this warehouse's schemas do not declare `{table}` as a public table")));
        }
        let report_progress = |p: Progress| {
            if let Some(f) = progress {
                f(table, p)
            }
        };
        let mut opts = IngestOptions::new(table, file);
        opts.format = Some(ingest::Format::Csv);
        opts.replace = true;
        opts.allow_duplicate = true;
        opts.quoting = !is_tab_separated(file);
        opts.actor = actor;
        opts.progress = Some(&report_progress);
        let report = ingest::ingest(wh, &key, &opts)?;
        tables.push((table.to_owned(), report.rows, file.clone()));
    }
    wh.forget_resolved_domains();
    Ok(LoadReport { tables, missing, elapsed: started.elapsed() })
}

fn is_tab_separated(path: &Path) -> bool {
    let mut first = Vec::new();
    let ok = std::fs::File::open(path).and_then(|f| std::io::BufRead::read_until(&mut std::io::BufReader::new(f), b'\n', &mut first));
    ok.is_ok() && first.contains(&b'\t')
}

/// One concept, as a search shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Concept {
    pub concept_id: i64,
    pub concept_name: String,
    pub domain_id: String,
    pub vocabulary_id: String,
    pub concept_class_id: String,
    pub standard_concept: Option<String>,
    pub concept_code: String,
}

/// Concepts whose name contains `q` (any case), or whose code or id is `q`; standard concepts
/// first, at most `limit`. Public data: no budget, no audit of values.
pub async fn search(wh: &Warehouse, q: &str, limit: usize) -> Result<Vec<Concept>> {
    let q = q.trim();
    if q.is_empty() {
        return Err(Error::BadRequest("an empty search: give a word of the concept's name, its code or its id".into()));
    }
    let ctx = crate::dp::session::public_session(wh)?;
    let pattern = format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let mut filter = col("concept_name").ilike(lit(pattern)).or(col("concept_code").eq(lit(q)));
    if let Ok(id) = q.parse::<i64>() {
        filter = filter.or(col("concept_id").eq(lit(id)));
    }
    let df = ctx
        .table("concept")
        .await?
        .filter(filter)?
        .sort(vec![col("standard_concept").is_null().sort(true, true), col("concept_name").sort(true, true)])?
        .limit(0, Some(limit.clamp(1, 1000)))?;
    let mut out = Vec::new();
    for batch in df.collect().await? {
        let int = |c: &str| batch.column_by_name(c).and_then(|a| a.as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>().cloned());
        let text = |c: &str| batch.column_by_name(c).and_then(|a| a.as_string_opt::<i32>().cloned());
        let (Some(id), Some(name), Some(domain), Some(vocab), Some(class), Some(standard), Some(code)) = (
            int("concept_id"),
            text("concept_name"),
            text("domain_id"),
            text("vocabulary_id"),
            text("concept_class_id"),
            text("standard_concept"),
            text("concept_code"),
        ) else {
            return Err(Error::internal("the concept table does not have the columns of its schema"));
        };
        let s = |a: &datafusion::arrow::array::StringArray, i: usize| if a.is_null(i) { String::new() } else { a.value(i).to_owned() };
        for i in 0..batch.num_rows() {
            out.push(Concept {
                concept_id: id.value(i),
                concept_name: s(&name, i),
                domain_id: s(&domain, i),
                vocabulary_id: s(&vocab, i),
                concept_class_id: s(&class, i),
                standard_concept: (!standard.is_null(i)).then(|| standard.value(i).to_owned()),
                concept_code: s(&code, i),
            });
        }
    }
    Ok(out)
}

/// The warehouse's schemas with every `concepts = "<domain>"` domain resolved into the concept
/// ids the loaded `concept` table lists for that domain (with 0, "no matching concept", which
/// every concept-id column may hold), when they are at most [`MAX_DOMAIN`]; a larger domain
/// stays unresolved (not public: grouping by it uses partition selection). Public data only;
/// cached until the vocabulary changes.
pub async fn resolve_domains(wh: &Warehouse) -> Result<Arc<Schemas>> {
    let stamp: String = wh.catalog.files("concept")?.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join("|");
    if let Some(cached) = wh.resolved_domains(&stamp) {
        return Ok(cached);
    }
    let wanted: BTreeSet<String> = wh
        .schemas
        .tables
        .values()
        .flat_map(|t| t.columns.iter())
        .filter_map(|c| match &c.domain {
            Some(Domain::Concepts(d)) => Some(d.clone()),
            _ => None,
        })
        .collect();
    let mut ids: BTreeMap<String, BTreeSet<DomainValue>> = BTreeMap::new();
    if !wanted.is_empty() && !stamp.is_empty() {
        let ctx = crate::dp::session::public_session(wh)?;
        let list: Vec<datafusion::logical_expr::Expr> = wanted.iter().map(|d| lit(d.clone())).collect();
        let df =
            ctx.table("concept").await?.filter(col("domain_id").in_list(list, false))?.select(vec![col("domain_id"), col("concept_id")])?;
        for batch in df.collect().await.map_err(crate::dp::session::public_read_error)? {
            let domains = batch.column(0).as_string::<i32>();
            let concept = batch.column(1).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            for i in 0..batch.num_rows() {
                if !domains.is_null(i) && !concept.is_null(i) {
                    ids.entry(domains.value(i).to_owned()).or_default().insert(DomainValue::Int(concept.value(i)));
                }
            }
        }
    }
    let mut schemas = wh.schemas.clone();
    for table in schemas.tables.values_mut() {
        for c in table.columns.iter_mut() {
            if let Some(Domain::Concepts(d)) = &c.domain
                && let Some(set) = ids.get(d)
                && set.len() < MAX_DOMAIN
            {
                let mut set = set.clone();
                set.insert(DomainValue::Int(0));
                c.domain = Some(Domain::Values(set));
            }
        }
    }
    let schemas = Arc::new(schemas);
    wh.remember_resolved_domains(stamp, schemas.clone());
    Ok(schemas)
}
