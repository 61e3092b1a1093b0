//! OMOP CDM exports as hospitals ship them: every "as shipped" variant (header case, delimiter,
//! quoting, ids written as floats, compact dates, datetimes with zones, column order, v5.3
//! names, a site's extra columns, empty fields, Parquet) ingests fully and stores the same rows;
//! every bad input names `file:line: column: reason` and commits nothing; source ids are
//! re-keyed, never stored; the schemas agree with the CDM's field-level specification; the
//! vocabularies load, are searched, and bound joins where one patient's codes have many ancestors.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Date32Type, Int64Type};
use secretum_engine::budget::Ledger;
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::error::Error;
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::ingest::{self, IngestOptions, IngestReport, Orphans};
use secretum_engine::omop::{self, CdmVersion};
use secretum_engine::pseudonym::{Key, Pseudonymizer};
use secretum_engine::{Warehouse, vocabulary};

use crate::common::{parquet_files, read_table, secretum, stderr, stdout};

/// A new, empty warehouse (with the minimal vocabulary `init` loads) and its key.
struct Site {
    dir: tempfile::TempDir,
    data: PathBuf,
    key: Key,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let key_file = dir.path().join("key");
        Warehouse::init(&data, Some(&key_file), None).unwrap();
        let key = Key::load(&key_file).unwrap();
        Site { dir, data, key }
    }

    fn open(&self) -> Warehouse {
        Warehouse::open(&self.data).unwrap()
    }

    /// Write `content` as `name` in the site's export directory.
    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.dir.path().join("export").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    fn ingest(&self, table: &str, file: &Path) -> Result<IngestReport, Error> {
        self.ingest_with(&IngestOptions::new(table, file))
    }

    fn ingest_with(&self, opts: &IngestOptions<'_>) -> Result<IngestReport, Error> {
        ingest::ingest(&mut self.open(), &self.key, opts)
    }

    /// Rows the catalog holds for a table.
    fn rows(&self, table: &str) -> u64 {
        self.open().catalog.summary([table.to_string()]).unwrap().iter().map(|s| s.rows).sum()
    }
}

fn ints(wh: &Warehouse, table: &str, column: &str) -> Vec<Option<i64>> {
    read_table(wh, table)
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).unwrap_or_else(|| panic!("{table}.{column}")).as_primitive::<Int64Type>().clone();
            (0..a.len()).map(move |i| a.is_valid(i).then(|| a.value(i))).collect::<Vec<_>>()
        })
        .collect()
}

fn dates(wh: &Warehouse, table: &str, column: &str) -> Vec<Option<i32>> {
    read_table(wh, table)
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).unwrap().as_primitive::<Date32Type>().clone();
            (0..a.len()).map(move |i| a.is_valid(i).then(|| a.value(i))).collect::<Vec<_>>()
        })
        .collect()
}

fn days(y: i32, m: u32, d: u32) -> i32 {
    (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap() - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

// ---------------------------------------------------------------------------------------------
// As shipped

/// One export in the baseline form: three patients, four diagnoses (one with no end date).
const PERSON: &[&[&str]] = &[
    &[
        "person_id",
        "gender_concept_id",
        "year_of_birth",
        "month_of_birth",
        "day_of_birth",
        "race_concept_id",
        "ethnicity_concept_id",
        "person_source_value",
    ],
    &["10204", "8507", "1950", "3", "14", "0", "0", "PAT-10204"],
    &["10205", "8532", "1962", "", "", "0", "0", "PAT-10205"],
    &["20999", "8532", "1988", "12", "1", "0", "0", "PAT-20999"],
];
const CONDITION: &[&[&str]] = &[
    &[
        "condition_occurrence_id",
        "person_id",
        "condition_concept_id",
        "condition_start_date",
        "condition_end_date",
        "condition_type_concept_id",
        "condition_source_value",
    ],
    &["1", "10204", "201826", "2019-04-02", "2019-05-01", "32817", "E11.9"],
    &["2", "10204", "320128", "2020-01-15", "", "32817", "I10"],
    &["3", "10205", "201826", "2018-11-30", "2018-12-02", "32817", "E11.9"],
    &["4", "20999", "4329847", "2021-06-07", "2021-06-07", "32817", "I21.9"],
];

/// A table rendered with a delimiter, every field passed through `cell` (header fields get
/// `head`).
fn render(rows: &[&[&str]], delimiter: &str, head: impl Fn(&str) -> String, cell: impl Fn(&str, &str) -> String) -> Vec<u8> {
    let header = rows[0];
    let mut out = String::new();
    out.push_str(&header.iter().map(|h| head(h)).collect::<Vec<_>>().join(delimiter));
    out.push('\n');
    for row in &rows[1..] {
        out.push_str(&row.iter().zip(header).map(|(v, h)| cell(h, v)).collect::<Vec<_>>().join(delimiter));
        out.push('\n');
    }
    out.into_bytes()
}

/// The rows a warehouse holds after ingesting one variant, in a form every variant must match:
/// (person, gender, year of birth) and (person, concept, start, end, source value), sorted.
type Stored = (BTreeSet<(i64, i64, i64)>, BTreeSet<(i64, i64, i32, Option<i32>)>);

fn stored(site: &Site) -> Stored {
    let wh = site.open();
    let p: BTreeSet<_> = ints(&wh, "person", "person_id")
        .into_iter()
        .zip(ints(&wh, "person", "gender_concept_id"))
        .zip(ints(&wh, "person", "year_of_birth"))
        .map(|((a, b), c)| (a.unwrap(), b.unwrap(), c.unwrap()))
        .collect();
    let ids = ints(&wh, "condition_occurrence", "person_id");
    let concepts = ints(&wh, "condition_occurrence", "condition_concept_id");
    let start = dates(&wh, "condition_occurrence", "condition_start_date");
    let end = dates(&wh, "condition_occurrence", "condition_end_date");
    let c = (0..ids.len()).map(|i| (ids[i].unwrap(), concepts[i].unwrap(), start[i].unwrap(), end[i])).collect();
    (p, c)
}

fn load_variant(person: &[u8], person_name: &str, condition: &[u8], condition_name: &str) -> (Site, IngestReport, IngestReport) {
    let site = Site::new();
    let p = site.file(person_name, person);
    let c = site.file(condition_name, condition);
    let rp = site.ingest("person", &p).unwrap_or_else(|e| panic!("{person_name}: {e}"));
    let rc = site.ingest("condition_occurrence", &c).unwrap_or_else(|e| panic!("{condition_name}: {e}"));
    assert_eq!((rp.rows, rc.rows), (3, 4), "{person_name}, {condition_name}");
    (site, rp, rc)
}

#[test]
fn every_as_shipped_variant_stores_the_same_rows() {
    let plain = |_: &str, v: &str| v.to_owned();
    let same = |h: &str| h.to_owned();
    let (base, rp, rc) =
        load_variant(&render(PERSON, ",", same, plain), "person.csv", &render(CONDITION, ",", same, plain), "condition_occurrence.csv");
    assert!(rp.shape.starts_with("OMOP CDM"), "{}", rp.shape);
    assert!(rc.shape.starts_with("OMOP CDM"), "{}", rc.shape);
    // month/day of birth are generalized away, the source value is an identifier: both dropped
    // and said.
    for dropped in ["month_of_birth", "day_of_birth", "person_source_value"] {
        assert!(rp.dropped_cdm_columns.iter().any(|c| c == dropped), "{dropped}: {:?}", rp.dropped_cdm_columns);
    }
    assert!(rp.dropped_other_columns.is_empty());
    let expected = stored(&base);
    // The stored values: start/end dates as written, an empty end date as NULL.
    let starts: BTreeSet<i32> = expected.1.iter().map(|r| r.2).collect();
    assert!(starts.contains(&days(2019, 4, 2)) && starts.contains(&days(2021, 6, 7)));
    assert_eq!(expected.1.iter().filter(|r| r.3.is_none()).count(), 1, "the empty end date is NULL");
    assert_eq!(expected.0.iter().map(|r| r.2).collect::<BTreeSet<_>>(), BTreeSet::from([1950, 1962, 1988]));

    let upper = |h: &str| h.to_ascii_uppercase();
    let quoted = |_: &str, v: &str| format!("\"{v}\"");
    let float_ids = |h: &str, v: &str| if h.ends_with("_id") && !v.is_empty() { format!("{v}.0") } else { v.to_owned() };
    let compact_dates = |h: &str, v: &str| if h.ends_with("_date") { v.replace('-', "") } else { v.to_owned() };
    let variants: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("upper-case headers", render(PERSON, ",", upper, plain), render(CONDITION, ",", upper, plain)),
        ("tab-separated", render(PERSON, "\t", same, plain), render(CONDITION, "\t", same, plain)),
        ("every field quoted", render(PERSON, ",", |h| format!("\"{h}\""), quoted), render(CONDITION, ",", |h| format!("\"{h}\""), quoted)),
        ("ids written as floats", render(PERSON, ",", upper, float_ids), render(CONDITION, ",", upper, float_ids)),
        ("dates as YYYYMMDD", render(PERSON, "\t", upper, plain), render(CONDITION, "\t", upper, compact_dates)),
        (
            "a byte-order mark and CRLF line ends",
            bom_crlf(render(PERSON, ",", upper, plain)),
            bom_crlf(render(CONDITION, ",", upper, plain)),
        ),
        ("columns in another order", reversed(PERSON, ","), reversed(CONDITION, ",")),
    ];
    for (name, person, condition) in variants {
        let ext = if person.contains(&b'\t') { "tsv" } else { "csv" };
        let (site, _, _) = load_variant(&person, &format!("PERSON.{ext}"), &condition, &format!("CONDITION_OCCURRENCE.{ext}"));
        assert_eq!(stored(&site).0.len(), 3, "{name}");
        assert!(same_rows_under_other_key(&stored(&site), &expected), "{name}");
    }
}

/// Each site has its own key, so pseudonyms differ between sites: compare the rows with the
/// pseudonyms replaced by their rank (the order of first appearance by year of birth).
fn same_rows_under_other_key(a: &Stored, b: &Stored) -> bool {
    fn canonical(s: &Stored) -> (Vec<(i64, i64)>, BTreeSet<(i64, i64, i32, Option<i32>)>) {
        let by_year: std::collections::BTreeMap<i64, i64> = s.0.iter().map(|(id, _, y)| (*id, *y)).collect();
        let people: Vec<(i64, i64)> = s.0.iter().map(|(_, g, y)| (*g, *y)).collect::<BTreeSet<_>>().into_iter().collect();
        let conditions = s.1.iter().map(|(id, c, st, e)| (by_year[id], *c, *st, *e)).collect();
        (people, conditions)
    }
    canonical(a) == canonical(b)
}

fn bom_crlf(bytes: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0xEF, 0xBB, 0xBF];
    out.extend(String::from_utf8(bytes).unwrap().replace('\n', "\r\n").into_bytes());
    out
}

fn reversed(rows: &[&[&str]], delimiter: &str) -> Vec<u8> {
    let rev: Vec<Vec<&str>> = rows.iter().map(|r| r.iter().rev().copied().collect()).collect();
    let refs: Vec<&[&str]> = rev.iter().map(|r| r.as_slice()).collect();
    render(&refs, delimiter, |h| h.to_owned(), |_, v| v.to_owned())
}

#[test]
fn the_same_patient_gets_the_same_pseudonym_in_every_table_and_every_spelling() {
    let site = Site::new();
    let p = site.file("person.csv", &render(PERSON, ",", |h| h.to_owned(), |_, v| v.to_owned()));
    site.ingest("person", &p).unwrap();
    // The diagnoses file writes its ids as floats: `10204.0` is patient 10204.
    let c = site.file(
        "CONDITION_OCCURRENCE.csv",
        &render(CONDITION, ",", |h| h.to_ascii_uppercase(), |h, v| if h == "person_id" { format!("{v}.0") } else { v.to_owned() }),
    );
    site.ingest("condition_occurrence", &c).unwrap();
    let wh = site.open();
    let unit = Pseudonymizer::new(&site.key, "privacy_unit");
    let expected: HashSet<i64> = ["10204", "10205", "20999"].iter().map(|s| unit.pseudonymize(s.as_bytes())).collect();
    let people: HashSet<i64> = ints(&wh, "person", "person_id").into_iter().flatten().collect();
    assert_eq!(people, expected, "person_id = HMAC(key, source person_id)");
    assert!(!people.contains(&10204) && !people.contains(&20999), "source ids are never stored");
    let diagnosed: HashSet<i64> = ints(&wh, "condition_occurrence", "person_id").into_iter().flatten().collect();
    assert!(diagnosed.is_subset(&people));
    // The source value (`PAT-10204`) is in no stored byte.
    for f in parquet_files(&site.data.join("tables")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(4).any(|w| w == b"PAT-"), "{}", f.display());
    }
}

#[test]
fn a_v53_visit_table_is_renamed_and_a_sites_extra_column_is_reported_and_dropped() {
    let site = Site::new();
    let p = site.file("person.csv", &render(PERSON, ",", |h| h.to_owned(), |_, v| v.to_owned()));
    site.ingest("person", &p).unwrap();
    let visits = "VISIT_OCCURRENCE_ID,PERSON_ID,VISIT_CONCEPT_ID,VISIT_START_DATE,VISIT_START_DATETIME,VISIT_END_DATE,VISIT_TYPE_CONCEPT_ID,ADMITTING_SOURCE_CONCEPT_ID,DISCHARGE_TO_CONCEPT_ID,SITE_WARD_CODE\n\
                  501.0,10204.0,9201,2019-04-02,2019-04-02T08:30:00.123+02:00,2019-04-05,32817,8870,8536,W12\n\
                  502.0,10205.0,9202,20181130,2018-11-30 14:00:00Z,20181130,32817,,,W03\n";
    let v = site.file("VISIT_OCCURRENCE.csv", visits.as_bytes());
    let r = site.ingest("visit_occurrence", &v).unwrap();
    assert_eq!(r.rows, 2);
    assert_eq!(r.cdm_version, Some(CdmVersion::V53), "v5.3 names show the version");
    assert_eq!(r.dropped_other_columns, ["site_ward_code"], "a site's column is reported, not stored");
    let wh = site.open();
    assert_eq!(ints(&wh, "visit_occurrence", "admitted_from_concept_id").into_iter().flatten().collect::<Vec<_>>(), [8870]);
    assert_eq!(ints(&wh, "visit_occurrence", "discharged_to_concept_id").into_iter().flatten().collect::<Vec<_>>(), [8536]);
    let batch = &read_table(&wh, "visit_occurrence")[0];
    assert!(batch.column_by_name("site_ward_code").is_none());

    // The visit ids are re-keyed consistently: a diagnosis's visit joins its visit.
    let c = site.file(
        "condition_occurrence.csv",
        b"condition_occurrence_id,person_id,condition_concept_id,condition_start_date,condition_type_concept_id,visit_occurrence_id\n7,10204,201826,2019-04-03,32817,501.0\n",
    );
    site.ingest("condition_occurrence", &c).unwrap();
    let wh = site.open();
    let visit_ids: HashSet<i64> = ints(&wh, "visit_occurrence", "visit_occurrence_id").into_iter().flatten().collect();
    let linked = ints(&wh, "condition_occurrence", "visit_occurrence_id")[0].unwrap();
    assert!(visit_ids.contains(&linked), "condition_occurrence.visit_occurrence_id joins visit_occurrence");
    assert!(!visit_ids.contains(&501) && !visit_ids.contains(&502), "visit ids are not stored as shipped");

    // Given the version, the steward's word wins over detection.
    let site = Site::new();
    let p = site.file("person.csv", &render(PERSON, ",", |h| h.to_owned(), |_, v| v.to_owned()));
    site.ingest("person", &p).unwrap();
    let v = site.file("visit_occurrence.csv", visits.as_bytes());
    let r = site.ingest_with(&IngestOptions { cdm_version: Some(CdmVersion::V53), ..IngestOptions::new("visit_occurrence", &v) }).unwrap();
    assert_eq!(r.cdm_version, Some(CdmVersion::V53));
}

#[test]
fn a_parquet_export_with_upper_case_names_ingests() {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let site = Site::new();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("PERSON_ID", DataType::Float64, false),
        Field::new("GENDER_CONCEPT_ID", DataType::Int64, false),
        Field::new("YEAR_OF_BIRTH", DataType::Int64, false),
        Field::new("RACE_CONCEPT_ID", DataType::Int64, true),
        Field::new("RACE_SOURCE_CONCEPT_ID", DataType::Int64, true),
        Field::new("ETHNICITY_CONCEPT_ID", DataType::Int64, true),
        Field::new("PERSON_SOURCE_VALUE", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        std::sync::Arc::new(Float64Array::from(vec![10204.0, 10205.0, 20999.0])),
        std::sync::Arc::new(Int64Array::from(vec![8507, 8532, 8532])),
        std::sync::Arc::new(Int64Array::from(vec![1950, 1962, 1988])),
        std::sync::Arc::new(Int64Array::from(vec![0, 0, 0])),
        std::sync::Arc::new(Int64Array::from(vec![Some(0), None, Some(0)])),
        std::sync::Arc::new(Int64Array::from(vec![0, 0, 0])),
        std::sync::Arc::new(StringArray::from(vec!["a", "b", "c"])),
    ];
    let path = site.dir.path().join("PERSON.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema.clone(), None).unwrap();
    w.write(&arrow::array::RecordBatch::try_new(schema, columns).unwrap()).unwrap();
    w.close().unwrap();
    let r = site.ingest("person", &path).unwrap();
    assert_eq!(r.rows, 3);
    assert!(r.dropped_cdm_columns.iter().any(|c| c == "person_source_value"));
    let wh = site.open();
    let unit = Pseudonymizer::new(&site.key, "privacy_unit");
    let ids: HashSet<i64> = ints(&wh, "person", "person_id").into_iter().flatten().collect();
    assert!(ids.contains(&unit.pseudonymize(b"10204")), "10204.0 in Parquet is patient 10204, as in CSV");
    assert_eq!(ints(&wh, "person", "race_source_concept_id").iter().filter(|v| v.is_none()).count(), 1, "NULL stays NULL");
}

// ---------------------------------------------------------------------------------------------
// Bad input: named, counted, nothing committed

/// Ingest `content` as `table` after `person` was ingested; the error's text, with the table
/// checked to be left exactly as before.
fn refused(table: &str, name: &str, content: &str, orphans: Orphans) -> String {
    let site = Site::new();
    let p = site.file("person.csv", &render(PERSON, ",", |h| h.to_owned(), |_, v| v.to_owned()));
    if table != "person" {
        site.ingest("person", &p).unwrap();
    }
    let before = site.rows(table);
    let f = site.file(name, content.as_bytes());
    let err = site.ingest_with(&IngestOptions { orphans, ..IngestOptions::new(table, &f) }).expect_err(name);
    assert_eq!(site.rows(table), before, "{name}: nothing committed");
    assert!(parquet_files(&site.data.join("tables").join(table)).len() as u64 == u64::from(before > 0), "{name}: no file left behind");
    err.to_string()
}

#[test]
fn bad_omop_input_is_named_by_file_line_and_column_and_commits_nothing() {
    let err = refused(
        "person",
        "PERSON.csv",
        "PERSON_ID,GENDER_CONCEPT_ID,YEAR_OF_BIRTH,RACE_CONCEPT_ID,ETHNICITY_CONCEPT_ID\n1,8507,1950,0,0\n2,8532,nineteen,0,0\n",
        Orphans::Reject,
    );
    assert!(err.contains("PERSON.csv:3: year_of_birth:"), "{err}");

    let err = refused(
        "condition_occurrence",
        "condition_occurrence.csv",
        "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,condition_type_concept_id\n1,10204,201826,2019-13-45,32817\n2,10205,201826,2019-01-02,32817\n",
        Orphans::Reject,
    );
    assert!(err.contains("condition_occurrence.csv:2: condition_start_date:") && err.contains("not a date"), "{err}");

    let err = refused(
        "person",
        "PERSON.csv",
        "PERSON_ID,GENDER_CONCEPT_ID,YEAR_OF_BIRTH,RACE_CONCEPT_ID,ETHNICITY_CONCEPT_ID\n1,8507,1950,0,0\n2,8532,1960,0,0\n1.0,8507,1950,0,0\n",
        Orphans::Reject,
    );
    assert!(err.contains("PERSON.csv:4: person_id:") && err.contains("also on line 2"), "a duplicated person names both lines: {err}");

    let err =
        refused("person", "PERSON.csv", "PERSON_ID,GENDER_CONCEPT_ID,YEAR_OF_BIRTH,ETHNICITY_CONCEPT_ID\n1,8507,1950,0\n", Orphans::Reject);
    assert!(err.contains("race_concept_id") && err.contains("missing"), "a missing required column is named: {err}");

    let orphans = "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,condition_type_concept_id\n1,10204,201826,2019-01-02,32817\n2,777,201826,2019-01-02,32817\n3,778,201826,2019-01-02,32817\n";
    let err = refused("condition_occurrence", "condition_occurrence.csv", orphans, Orphans::Reject);
    assert!(err.contains("condition_occurrence.csv:3: person_id:") && err.contains("not in `person`"), "{err}");
    assert!(err.contains("2 problems in all"), "the orphans are counted: {err}");

    // The steward may choose to drop them instead: counted in the report.
    let site = Site::new();
    let p = site.file("person.csv", &render(PERSON, ",", |h| h.to_owned(), |_, v| v.to_owned()));
    site.ingest("person", &p).unwrap();
    let f = site.file("condition_occurrence.csv", orphans.as_bytes());
    let r = site.ingest_with(&IngestOptions { orphans: Orphans::Drop, ..IngestOptions::new("condition_occurrence", &f) }).unwrap();
    assert_eq!((r.rows, r.orphans_dropped), (1, 2));
}

#[test]
fn a_directory_stops_at_its_first_bad_table_and_keeps_what_it_committed() {
    let site = Site::new();
    site.file("PERSON.csv", &render(PERSON, ",", |h| h.to_ascii_uppercase(), |_, v| v.to_owned()));
    site.file("CONDITION_OCCURRENCE.csv", b"CONDITION_OCCURRENCE_ID,PERSON_ID,CONDITION_CONCEPT_ID,CONDITION_START_DATE,CONDITION_TYPE_CONCEPT_ID\n1,10204,201826,yesterday,32817\n");
    site.file("CONCEPT.csv", b"concept_id\tconcept_name\n");
    site.file("notes.txt", b"hello\n");
    let dir = site.dir.path().join("export");
    let err = ingest::ingest_dir(&mut site.open(), &site.key, &dir, &IngestOptions::new("", &dir), None).unwrap_err().to_string();
    assert!(err.contains("CONDITION_OCCURRENCE.csv:2: condition_start_date:"), "{err}");
    assert!(err.contains("person"), "the error says which tables were committed: {err}");
    assert_eq!(site.rows("person"), 3);
    assert_eq!(site.rows("condition_occurrence"), 0);
}

// ---------------------------------------------------------------------------------------------
// A synthetic export at scale, through the binary

#[test]
fn generate_omop_then_ingest_dir_vocabulary_and_query_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let run = |args: &[&str]| {
        let o = secretum(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let gen_args = ["generate", "--format", "omop", "--cdm-version", "5.3", "--upper-case", "--patients", "800", "--seed", "3", "--out"];
    run(&[&gen_args[..], &[export.to_str().unwrap()]].concat());
    let person = std::fs::read_to_string(export.join("PERSON.csv")).unwrap();
    assert!(person.starts_with("PERSON_ID,"), "upper-case header");
    assert!(!person.to_ascii_lowercase().contains("nir"), "no NIR in an OMOP export");
    let source_ids: HashSet<i64> = person.lines().skip(1).map(|l| l.split(',').next().unwrap().parse::<f64>().unwrap() as i64).collect();
    assert_eq!(source_ids.len(), 800);
    assert!(
        export.join("vocabulary").join("CONCEPT_ANCESTOR.csv").exists() || export.join("vocabulary").join("concept_ancestor.csv").exists()
    );

    run(&["init", "--data-dir", d, "--key-file", dir.path().join("key").to_str().unwrap()]);
    let out = run(&["ingest", "--data-dir", d, "--key-file", dir.path().join("key").to_str().unwrap(), "--dir", export.to_str().unwrap()]);
    assert!(out.contains("OMOP CDM v5.3"), "{out}");
    let wh = Warehouse::open(&data).unwrap();
    // Every row of every file is stored.
    for entry in std::fs::read_dir(&export).unwrap().flatten().filter(|e| e.path().is_file()) {
        let Some((table, _)) = ingest::table_of(&entry.path()) else { continue };
        let lines = std::fs::read_to_string(entry.path()).unwrap().lines().count() as u64 - 1;
        let rows: u64 = wh.catalog.summary([table.clone()]).unwrap().iter().map(|s| s.rows).sum();
        assert_eq!(rows, lines, "{table}");
    }
    let stored: HashSet<i64> = ints(&wh, "person", "person_id").into_iter().flatten().collect();
    assert_eq!(stored.len(), 800);
    assert!(stored.intersection(&source_ids).count() == 0, "no source person_id is stored");

    let vocab = export.join("vocabulary");
    let out = run(&["vocabulary", "load", "--data-dir", d, vocab.to_str().unwrap()]);
    assert!(out.contains("concept_ancestor"), "{out}");
    let found = run(&["vocabulary", "search", "--data-dir", d, "diabetes"]);
    assert!(found.contains("201826"), "{found}");

    run(&["policy", "set", "--data-dir", d, "--patient-epsilon-cap", "1000000", "--suppression-threshold", "0"]);
    run(&[
        "project",
        "create",
        "--data-dir",
        d,
        "--name",
        "ex",
        "--epsilon",
        "100",
        "--delta",
        "1e-5",
        "--tables",
        "person,condition_occurrence",
    ]);
    let answer = run(&["query", "--data-dir", d, "--project", "ex", "--epsilon", "1", "--format", "json", "SELECT COUNT(*) FROM person"]);
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let n = v["rows"][0][0]["value"].as_f64().unwrap();
    assert!((n - 800.0).abs() < 15.0, "{n}");
}

// ---------------------------------------------------------------------------------------------
// The schemas against the CDM specification

#[test]
fn the_schemas_agree_with_the_cdm_field_level_specification() {
    let schemas = secretum_engine::schema::Schemas::bundled().unwrap();
    let spec = omop::spec();
    let patient: Vec<_> = schemas.tables.values().filter(|t| !t.public).collect();
    assert!(patient.len() >= 15, "{}", patient.len());
    for t in &patient {
        let fields = spec.get(&t.name).unwrap_or_else(|| panic!("{} is not a CDM table", t.name));
        for c in t.columns.iter().filter(|c| c.is_stored()) {
            // Columns outside the CDM are the extract's own generalized quasi-identifiers.
            if c.name == "department" {
                continue;
            }
            let f = fields.iter().find(|f| f.name == c.name).unwrap_or_else(|| panic!("{}.{} is not in the CDM", t.name, c.name));
            let ours = c.ty.arrow();
            let theirs = f.datatype.as_str();
            let agrees = match theirs {
                "integer" | "bigint" => ours == arrow::datatypes::DataType::Int64,
                "float" => ours == arrow::datatypes::DataType::Float64 || ours == arrow::datatypes::DataType::Int64,
                "date" => ours == arrow::datatypes::DataType::Date32,
                "datetime" => matches!(ours, arrow::datatypes::DataType::Timestamp(..) | arrow::datatypes::DataType::Date32),
                s if s.starts_with("varchar") => ours == arrow::datatypes::DataType::Utf8,
                _ => true,
            };
            assert!(agrees, "{}.{}: stored as {ours:?}, the CDM says {theirs}", t.name, c.name);
            // A concept id whose CDM domain is known is a public domain of that vocabulary domain.
            if let (Some(domain), Some(secretum_engine::schema::Domain::Concepts(d))) = (&f.fk_domain, &c.domain) {
                assert_eq!(d, domain, "{}.{}", t.name, c.name);
            }
        }
        // Every required field of the CDM is stored, or deliberately not (an identifier that
        // links back to the patient record, a generalized birth date part).
        for f in fields.iter().filter(|f| f.required) {
            let kept = t.column(&f.name).is_some_and(|c| c.is_stored());
            let deliberate = ["_source_value", "_datetime"].iter().any(|s| f.name.ends_with(s))
                || ["month_of_birth", "day_of_birth", "birth_datetime"].contains(&f.name.as_str())
                || t.column(&f.name).is_some();
            assert!(kept || deliberate, "{}.{} is required by the CDM and neither stored nor deliberately dropped", t.name, f.name);
        }
        assert!(t.max_rows_per_unit >= 1);
    }
    for t in [
        "procedure_occurrence",
        "observation",
        "device_exposure",
        "visit_detail",
        "condition_era",
        "drug_era",
        "specimen",
        "payer_plan_period",
    ] {
        assert!(schemas.tables.contains_key(t), "{t}");
    }
    for t in vocabulary::TABLES {
        assert!(schemas.get(t).unwrap().public, "{t} is public");
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabularies: loaded, searched, and joins bounded

/// A vocabulary where concept 1000 has `fan_out` ancestors.
fn wide_vocabulary(dir: &Path, fan_out: i64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut concept = String::from(
        "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code\tvalid_start_date\tvalid_end_date\tinvalid_reason\n",
    );
    let mut ancestor = String::from("ancestor_concept_id\tdescendant_concept_id\tmin_levels_of_separation\tmax_levels_of_separation\n");
    for c in [1000, 1001] {
        concept.push_str(&format!("{c}\tleaf {c}\tCondition\tSNOMED\tClinical Finding\tS\t{c}\t19700101\t20991231\t\n"));
        ancestor.push_str(&format!("{c}\t{c}\t0\t0\n"));
    }
    for a in 0..fan_out {
        let id = 5000 + a;
        concept.push_str(&format!("{id}\t\"group\" {a}\tCondition\tSNOMED\tClinical Finding\tS\tg{a}\t19700101\t20991231\t\n"));
        ancestor.push_str(&format!("{id}\t1000\t1\t1\n"));
    }
    std::fs::write(dir.join("CONCEPT.csv"), concept).unwrap();
    std::fs::write(dir.join("CONCEPT_ANCESTOR.csv"), ancestor).unwrap();
}

#[test]
fn one_patients_codes_with_many_ancestors_move_a_roll_up_by_at_most_the_bound() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bound = crate::common::max_rows("condition_occurrence");
    let mut answers = Vec::new();
    for with_target in [false, true] {
        let site = Site::new();
        let vocab = site.dir.path().join("athena");
        wide_vocabulary(&vocab, 300);
        let report = vocabulary::load(&mut site.open(), &vocab, "steward", None).unwrap();
        assert!(report.tables.iter().any(|(t, rows, _)| t == "concept" && *rows == 302));
        // A concept name with a quote: Athena files are not quoted.
        let found = rt.block_on(vocabulary::search(&site.open(), "\"group\" 7", 10)).unwrap();
        assert_eq!(found[0].concept_id, 5007);

        let mut person = String::from("person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n");
        let mut cond =
            String::from("condition_occurrence_id,person_id,condition_concept_id,condition_start_date,condition_type_concept_id\n");
        for p in 1..=50 {
            person.push_str(&format!("{p},8507,1960,0,0\n"));
            cond.push_str(&format!("{p},{p},1001,2020-01-01,32817\n"));
        }
        if with_target {
            // The target: 40 diagnoses of the code with 300 ancestors, 12,000 rows after the join.
            person.push_str("999,8532,1970,0,0\n");
            for d in 0..40 {
                cond.push_str(&format!("{},999,1000,2020-02-{:02},32817\n", 1000 + d, 1 + d % 28));
            }
        }
        site.ingest("person", &site.file("person.csv", person.as_bytes())).unwrap();
        site.ingest("condition_occurrence", &site.file("condition_occurrence.csv", cond.as_bytes())).unwrap();
        let mut g = Governance::open(&site.data).unwrap();
        g.set_policy("t", &PolicyUpdate { patient_epsilon_cap: Some(1e12), suppression_threshold: Some(0), ..Default::default() }).unwrap();
        let tables = ["person".to_string(), "condition_occurrence".into()];
        g.create_project("t", "t", 1e12, 1e-3, &tables, &tables).unwrap();
        let mut ledger = Ledger::open(&site.data).unwrap();
        let sql = "SELECT COUNT(*), COUNT(DISTINCT co.person_id) FROM condition_occurrence co JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id";
        let req = QueryRequest { actor: "t".into(), project: "t".into(), sql: sql.into(), epsilon: 1.0, ..Default::default() };
        let answer = rt.block_on(dp::run(&site.open(), &mut ledger, &req, Noise::Exact)).unwrap();
        let json = secretum_api::output::json(&answer);
        let cell = |i: usize| json.rows[0][i]["value"].as_f64().unwrap();
        answers.push((cell(0), cell(1)));
    }
    let (without, with) = (answers[0], answers[1]);
    assert_eq!(without, (50.0, 50.0));
    // 12,000 joined rows of one patient, truncated to the bound after the join.
    assert!(with.0 - without.0 <= bound && with.0 > without.0, "rows moved by {} (bound {bound})", with.0 - without.0);
    assert_eq!(with.1 - without.1, 1.0);
}

// ---------------------------------------------------------------------------------------------
// An OMOP database no one here wrote

/// The `inspectomop` package's tiny OMOP database (CDM v5.2, clinical tables and vocabulary),
/// installed into the test environment (nothing of it is committed), exported as an ETL ships
/// it (`tests/omop/export_inspectomop.py`), ingested and loaded through the binary, and
/// counted: patients, patients with a condition, rows of every table (capped per patient at
/// the table's bound, as the release does), patients under an ancestor concept, all against the
/// raw tables within three times the answer's 95% half-width (a miss has probability about
/// 0.05³ per check).
#[test]
fn an_omop_database_no_one_here_wrote_loads_as_shipped_and_answers_its_own_counts() {
    let py = crate::notebooks::venv();
    let has = |p: &Path| {
        std::process::Command::new(p)
            .args(["-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('inspectomop') is None)"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&py) {
        // Its own dependencies (pandas, SQLAlchemy) are not needed: only its database file is read.
        let o = std::process::Command::new(&py).args(["-m", "pip", "install", "-q", "--no-deps", "inspectomop==0.2.3"]).output().unwrap();
        assert!(o.status.success(), "pip install inspectomop: {}", String::from_utf8_lossy(&o.stderr));
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/omop/export_inspectomop.py");
    let o = std::process::Command::new(&py).arg(&script).arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "export: {}", String::from_utf8_lossy(&o.stderr));
    let truth: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("truth.json")).unwrap()).unwrap();

    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let key = dir.path().join("key");
    let run = |args: &[&str]| {
        let o = secretum(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    run(&["init", "--data-dir", d, "--key-file", key.to_str().unwrap()]);
    let export = dir.path().join("export");
    let out = run(&["ingest", "--data-dir", d, "--key-file", key.to_str().unwrap(), "--dir", export.to_str().unwrap()]);
    assert!(out.contains("person_source_value"), "dropped identifiers are reported: {out}");
    run(&["vocabulary", "load", "--data-dir", d, dir.path().join("vocabulary").to_str().unwrap()]);

    let tables: Vec<String> = truth["rows_per_patient"].as_object().unwrap().keys().cloned().collect();
    let wh = Warehouse::open(&data).unwrap();
    for t in &tables {
        let file_rows = std::fs::read_to_string(export.join(format!("{}.csv", t.to_ascii_uppercase()))).unwrap().lines().count() as u64 - 1;
        let stored: u64 = wh.catalog.summary([t.clone()]).unwrap().iter().map(|s| s.rows).sum();
        assert_eq!(stored, file_rows, "{t}: every row of the export is stored");
    }
    run(&[
        "policy",
        "set",
        "--data-dir",
        d,
        "--patient-epsilon-cap",
        "1000000",
        "--suppression-threshold",
        "0",
        "--query-epsilon-cap",
        "2",
    ]);
    run(&["project", "create", "--data-dir", d, "--name", "io", "--epsilon", "1000", "--delta", "1e-5", "--tables", &tables.join(",")]);
    let ask = |sql: &str| -> (f64, f64) {
        let out = run(&["query", "--data-dir", d, "--project", "io", "--epsilon", "2", "--format", "json", sql]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        // The mechanism's half-width (the shown interval is cut at 0 for counts).
        let value = v["rows"][0][0]["value"].as_f64().unwrap();
        (value, v["aggregates"][0]["ci95_half_width"].as_f64().unwrap())
    };
    let check = |what: &str, (value, half): (f64, f64), truth: f64| {
        eprintln!("{what}: DP {value} ± {half}, truth {truth}");
        assert!((value - truth).abs() <= 3.0 * half, "{what}: DP {value} ± {half}, truth {truth}");
    };
    check("patients", ask("SELECT COUNT(*) FROM person"), truth["patients"].as_f64().unwrap());
    check(
        "patients with a condition",
        ask("SELECT COUNT(DISTINCT person_id) FROM condition_occurrence"),
        truth["patients_with_a_condition"].as_f64().unwrap(),
    );
    for t in &tables {
        let k = crate::common::max_rows(t);
        let capped: f64 = truth["rows_per_patient"][t].as_array().unwrap().iter().map(|n| n.as_f64().unwrap().min(k)).sum();
        check(&format!("rows of {t} (≤ {k} per patient)"), ask(&format!("SELECT COUNT(*) FROM {t}")), capped);
    }
    let ancestor = &truth["ancestor"];
    check(
        "patients under the most common ancestor concept",
        ask(&format!(
            "SELECT COUNT(DISTINCT co.person_id) FROM condition_occurrence co JOIN concept_ancestor ca \
             ON ca.descendant_concept_id = co.condition_concept_id WHERE ca.ancestor_concept_id = {}",
            ancestor["concept_id"]
        )),
        ancestor["patients"].as_f64().unwrap(),
    );
}
