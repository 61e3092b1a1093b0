//! Ingest: pseudonymization, linkage, generalization, bad input, atomicity, crash safety.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use secretum_engine::Error;
use secretum_engine::ingest::{self, Format, IngestOptions};
use secretum_engine::pseudonym::{Key, Pseudonymizer};

use crate::common::*;

fn ingest_all(fx: &Fixture) {
    let mut wh = fx.open();
    let key = fx.key();
    for t in secretum_engine::synth::TABLES {
        ingest::ingest(&mut wh, &key, &IngestOptions::new(t, &fx.raw(t))).unwrap_or_else(|e| panic!("ingest {t}: {e}"));
    }
}

fn int_column(wh: &secretum_engine::Warehouse, table: &str, column: &str) -> Vec<Option<i64>> {
    read_table(wh, table)
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).expect("column").as_primitive::<Int64Type>().clone();
            (0..a.len()).map(move |i| if a.is_null(i) { None } else { Some(a.value(i)) }).collect::<Vec<_>>()
        })
        .collect()
}

fn string_column(wh: &secretum_engine::Warehouse, table: &str, column: &str) -> Vec<Option<String>> {
    read_table(wh, table)
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).expect("column").as_string::<i32>().clone();
            (0..a.len()).map(move |i| if a.is_null(i) { None } else { Some(a.value(i).to_owned()) }).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn generate_then_ingest_round_trip_keeps_every_row() {
    let fx = Fixture::new(600, 11);
    ingest_all(&fx);
    let wh = fx.open();
    let summary = wh.catalog.summary(secretum_engine::synth::TABLES.iter().map(|t| t.to_string())).unwrap();
    for s in summary {
        let (_, rows) = read_csv(&fx.raw(&s.table));
        assert_eq!(s.rows, rows.len() as u64, "{}", s.table);
        assert!(s.files >= 1 && s.bytes > 0, "{}", s.table);
    }
    // The stored schema is the policy's stored columns, nothing else.
    let person = read_table(&wh, "person");
    let names: Vec<String> = person[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(
        names,
        [
            "person_id",
            "gender_concept_id",
            "year_of_birth",
            "department",
            "race_concept_id",
            "ethnicity_concept_id",
            "gender_source_value",
            "gender_source_concept_id",
            "race_source_value",
            "race_source_concept_id",
            "ethnicity_source_value",
            "ethnicity_source_concept_id"
        ]
    );
}

#[test]
fn generate_is_deterministic_for_a_seed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    secretum_engine::synth::generate(300, 5, a.path(), None).unwrap();
    secretum_engine::synth::generate(300, 5, b.path(), None).unwrap();
    secretum_engine::synth::generate(300, 6, c.path(), None).unwrap();
    for t in secretum_engine::synth::TABLES {
        let f = format!("{t}.csv");
        assert_eq!(std::fs::read(a.path().join(&f)).unwrap(), std::fs::read(b.path().join(&f)).unwrap(), "{t}");
    }
    assert_ne!(std::fs::read(a.path().join("person.csv")).unwrap(), std::fs::read(c.path().join("person.csv")).unwrap());
}

#[test]
fn raw_identifiers_appear_nowhere_in_the_data_directory() {
    let fx = Fixture::new(400, 3);
    ingest_all(&fx);
    let (header, rows) = read_csv(&fx.raw("person"));
    let mut secrets: HashSet<String> = HashSet::new();
    for row in &rows {
        for (h, v) in header.iter().zip(row) {
            // Every direct identifier, and the exact birth date and full postcode.
            if ["nir", "first_name", "last_name", "phone", "birth_date", "postcode"].contains(&h.as_str()) && v.len() >= 5 {
                secrets.insert(v.clone());
            }
        }
    }
    assert!(secrets.len() > 1000, "expected many identifiers, got {}", secrets.len());
    let files = files_under(&fx.data);
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "parquet")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        // Uncompressed identifiers would show as plain bytes; zstd would not hide a stored
        // column either, so also check the decoded string columns below.
        // Short values (5-digit postcodes) are checked in the decoded columns only: as raw bytes
        // they turn up by chance inside hashes and timestamps.
        for s in secrets.iter().filter(|s| s.len() >= 6) {
            assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "{} found in {}", s, f.display());
        }
    }
    let wh = fx.open();
    for t in secretum_engine::synth::TABLES {
        for batch in read_table(&wh, t) {
            for col in batch.columns() {
                if let Some(strings) = col.as_string_opt::<i32>() {
                    for v in strings.iter().flatten() {
                        assert!(!secrets.contains(v), "{v} stored in {t}");
                    }
                }
            }
        }
    }
}

#[test]
fn pseudonyms_are_keyed_deterministic_and_link_tables() {
    let fx = Fixture::new(300, 8);
    ingest_all(&fx);
    let wh = fx.open();
    let key = fx.key();
    let (header, rows) = read_csv(&fx.raw("person"));
    let nir = header.iter().position(|h| h == "nir").unwrap();
    let p = Pseudonymizer::new(&key, "privacy_unit");
    let expected: HashSet<i64> = rows.iter().map(|r| p.pseudonymize(r[nir].as_bytes())).collect();
    let stored: HashSet<i64> = int_column(&wh, "person", "person_id").into_iter().flatten().collect();
    assert_eq!(stored, expected, "person_id is HMAC(key, NIR)");
    let other = Pseudonymizer::new(&Key::from_bytes([9; 32]), "privacy_unit");
    assert!(rows.iter().all(|r| !stored.contains(&other.pseudonymize(r[nir].as_bytes()))), "another key gives other pseudonyms");

    // Linkage: every patient id in every other table is a known person.
    for t in ["observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure", "measurement", "death"] {
        let ids: HashSet<i64> = int_column(&wh, t, "person_id").into_iter().flatten().collect();
        assert!(!ids.is_empty(), "{t}");
        assert!(ids.is_subset(&stored), "{t} has patients unknown to person");
    }
    // Record identifiers are pseudonymized too, in their own space: visits referenced by
    // conditions are visits that exist.
    let visits: HashSet<i64> = int_column(&wh, "visit_occurrence", "visit_occurrence_id").into_iter().flatten().collect();
    let referenced: HashSet<i64> = int_column(&wh, "condition_occurrence", "visit_occurrence_id").into_iter().flatten().collect();
    assert!(!referenced.is_empty() && referenced.is_subset(&visits));
    assert!(visits.is_disjoint(&stored));
}

#[test]
fn quasi_identifiers_are_generalized() {
    let fx = Fixture::new(300, 4);
    ingest_all(&fx);
    let wh = fx.open();
    let key = fx.key();
    let p = Pseudonymizer::new(&key, "privacy_unit");
    let (header, rows) = read_csv(&fx.raw("person"));
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let expected: HashMap<i64, (i64, String)> = rows
        .iter()
        .map(|r| {
            (p.pseudonymize(r[col("nir")].as_bytes()), (r[col("birth_date")][..4].parse().unwrap(), r[col("postcode")][..2].to_owned()))
        })
        .collect();
    let ids = int_column(&wh, "person", "person_id");
    let years = int_column(&wh, "person", "year_of_birth");
    let depts = string_column(&wh, "person", "department");
    for ((id, year), dept) in ids.iter().zip(&years).zip(&depts) {
        let (y, d) = &expected[&id.unwrap()];
        assert_eq!(year.unwrap(), *y);
        assert_eq!(dept.as_deref().unwrap(), d);
    }
}

#[test]
fn date_shift_keeps_intervals_within_a_patient() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(
        schemas.join("stay.toml"),
        r#"table = "stay"
max_rows_per_unit = 5
[[columns]]
name = "person_id"
type = "integer"
role = "privacy_unit"
source = "patient"
[[columns]]
name = "patient"
type = "varchar(20)"
role = "identifier"
[[columns]]
name = "admitted"
type = "date"
role = "quasi_identifier"
generalize = { shift_days = 30 }
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    secretum_engine::Warehouse::init(&data, Some(&dir.path().join("k")), Some(&schemas)).unwrap();
    let mut csv = String::from("patient,admitted\n");
    for p in 0..50 {
        csv.push_str(&format!("p{p},2020-01-01\np{p},2020-01-11\n"));
    }
    let file = dir.path().join("stay.csv");
    std::fs::write(&file, csv).unwrap();
    let mut wh = secretum_engine::Warehouse::open(&data).unwrap();
    let key = wh.key(None).unwrap();
    ingest::ingest(&mut wh, &key, &IngestOptions::new("stay", &file)).unwrap();
    let batches = read_table(&wh, "stay");
    let ids = batches[0].column(0).as_primitive::<Int64Type>();
    let dates = batches[0].column(1).as_primitive::<arrow::datatypes::Date32Type>();
    let jan1 = 18262; // 2020-01-01
    let mut shifts = HashSet::new();
    for i in (0..ids.len()).step_by(2) {
        assert_eq!(ids.value(i), ids.value(i + 1));
        assert_eq!(dates.value(i + 1) - dates.value(i), 10, "the interval within a patient is kept");
        let shift = dates.value(i) - jan1;
        assert!((-30..=30).contains(&shift));
        shifts.insert(shift);
    }
    assert!(shifts.len() > 10, "shifts vary between patients: {shifts:?}");
}

/// Write a person extract with `extra` appended after `keep` valid rows.
fn person_with(fx: &Fixture, keep: usize, extra: &[String]) -> std::path::PathBuf {
    let text = std::fs::read_to_string(fx.raw("person")).unwrap();
    let mut lines: Vec<String> = text.lines().take(keep + 1).map(str::to_owned).collect();
    lines.extend(extra.iter().cloned());
    let path = fx.path(&format!("bad-{}.csv", rand_suffix()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A valid person row in the generator's column order, with one field replaced.
fn person_row(fx: &Fixture, column: &str, value: &str) -> String {
    let (header, rows) = read_csv(&fx.raw("person"));
    let mut row = rows[0].clone();
    if let Some(i) = header.iter().position(|h| h == column) {
        row[i] = value.to_owned();
    }
    row.join(",")
}

#[test]
fn every_kind_of_bad_row_is_reported_with_file_line_and_column_and_nothing_is_committed() {
    let fx = Fixture::new(50, 1);
    let key = fx.key();
    let cases: Vec<(String, &str)> = vec![
        (person_row(&fx, "gender_concept_id", "male"), "gender_concept_id: `male` is not an integer"),
        (person_row(&fx, "gender_concept_id", ""), "gender_concept_id: missing required value"),
        (person_row(&fx, "gender_concept_id", "8551"), "gender_concept_id: `8551` is not in the column's declared domain"),
        (person_row(&fx, "birth_date", "1960-13-45"), "birth_date: value is not a date"),
        (person_row(&fx, "nir", "123456789012345"), "nir: not a valid NIR"),
        (person_row(&fx, "postcode", "ZZ100"), "postcode: first 2 characters are not in the column's declared domain"),
        ("x,not,a,valid,row".to_owned(), "wrong number of columns: expected 10, found 5"),
    ];
    for (row, expected) in cases {
        let file = person_with(&fx, 20, &[row]);
        let mut wh = fx.open();
        let err = ingest::ingest(&mut wh, &key, &IngestOptions::new("person", &file)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidInput { .. }), "{msg}");
        assert!(msg.contains(&format!("{}:22: {expected}", file.display())), "expected `{expected}` at line 22 in:\n{msg}");
        assert!(msg.contains("nothing was committed"));
        assert!(wh.catalog.files("person").unwrap().is_empty());
        assert!(parquet_files(&fx.data.join("tables/person")).is_empty(), "a failed ingest left Parquet behind");
    }
    // The identifier's value is never echoed.
    let file = person_with(&fx, 3, &[person_row(&fx, "nir", "999999999999999")]);
    let msg = ingest::ingest(&mut fx.open(), &key, &IngestOptions::new("person", &file)).unwrap_err().to_string();
    assert!(!msg.contains("999999999999999"), "{msg}");

    // Bad UTF-8.
    let file = person_with(&fx, 5, &[]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    let mut row = person_row(&fx, "gender_source_value", "@").into_bytes();
    let at = row.iter().position(|b| *b == b'@').unwrap();
    row[at] = 0xff;
    f.write_all(&row).unwrap();
    f.write_all(b"\n").unwrap();
    let msg = ingest::ingest(&mut fx.open(), &key, &IngestOptions::new("person", &file)).unwrap_err().to_string();
    assert!(msg.contains(":7: gender_source_value: invalid UTF-8"), "{msg}");
}

#[test]
fn out_of_bounds_values_are_rejected_where_the_schema_says_so() {
    // A steward's schema that rejects days_supply outside [0, 365] (the bundled one keeps such
    // values and clamps them in queries: real exports have longer prescriptions).
    let fx = Fixture::new(50, 2);
    let schemas = fx.path("schemas");
    secretum_engine::schema::Schemas::write_bundled(&schemas).unwrap();
    let toml = std::fs::read_to_string(schemas.join("drug_exposure.toml")).unwrap();
    let strict = toml.replacen("name = \"days_supply\"", "name = \"days_supply\"\non_out_of_bounds = \"reject\"", 1);
    assert_ne!(toml, strict);
    std::fs::write(schemas.join("drug_exposure.toml"), strict).unwrap();
    let data = fx.path("strict");
    secretum_engine::Warehouse::init(&data, Some(&fx.path("strict.key")), Some(&schemas)).unwrap();
    let key = secretum_engine::pseudonym::Key::load(&fx.path("strict.key")).unwrap();
    let (header, rows) = read_csv(&fx.raw("drug_exposure"));
    let supply = header.iter().position(|h| h == "days_supply").unwrap();
    let mut out = header.join(",") + "\n";
    for (i, r) in rows.iter().enumerate() {
        let mut r = r.clone();
        if i == 3 {
            r[supply] = "400".into();
        }
        out.push_str(&r.join(","));
        out.push('\n');
    }
    let file = fx.path("drugs.csv");
    std::fs::write(&file, out).unwrap();
    let mut strict_wh = secretum_engine::Warehouse::open(&data).unwrap();
    let msg = ingest::ingest(&mut strict_wh, &key, &IngestOptions::new("drug_exposure", &file)).unwrap_err().to_string();
    assert!(msg.contains(":5: days_supply: `400` is outside the bounds [0, 365]"), "{msg}");
    // The bundled schema keeps it (clamped when aggregated).
    ingest::ingest(&mut fx.open(), &fx.key(), &IngestOptions::new("drug_exposure", &file)).unwrap();
}

#[test]
fn many_bad_rows_show_the_first_and_count_the_rest() {
    let fx = Fixture::new(50, 1);
    let bad: Vec<String> = (0..45).map(|_| person_row(&fx, "gender_concept_id", "x")).collect();
    let file = person_with(&fx, 2, &bad);
    let msg = ingest::ingest(&mut fx.open(), &fx.key(), &IngestOptions::new("person", &file)).unwrap_err().to_string();
    // Each bad row is also a second row of the same patient (the rows repeat one NIR): 90 problems.
    assert_eq!(msg.matches("is not an integer").count() + msg.matches("also on line").count(), 20, "{msg}");
    assert!(msg.contains("and 70 more") && msg.contains("90 problems in all"), "{msg}");
}

#[test]
fn header_must_match_the_schema() {
    let fx = Fixture::new(20, 1);
    let text = std::fs::read_to_string(fx.raw("person")).unwrap();
    let renamed = text.replacen("first_name", "surname", 1);
    let file = fx.path("renamed.csv");
    std::fs::write(&file, renamed).unwrap();
    let msg = ingest::ingest(&mut fx.open(), &fx.key(), &IngestOptions::new("person", &file)).unwrap_err().to_string();
    assert!(msg.contains("column `surname` is not in the schema of `person`"), "{msg}");
    assert!(msg.contains("required column `first_name` is missing"), "{msg}");
}

#[test]
fn an_injected_failure_in_the_last_batch_commits_nothing() {
    let fx = Fixture::new(30_000, 5);
    let file = fx.raw("visit_occurrence");
    let (_, rows) = read_csv(&file);
    let batches = rows.len().div_ceil(ingest::BATCH_ROWS);
    assert!(batches >= 2, "need several batches, have {} rows", rows.len());
    let mut wh = fx.open();
    let key = fx.key();
    let mut opts = IngestOptions::new("visit_occurrence", &file);
    opts.fail_after_batches = Some(batches - 1);
    let err = ingest::ingest(&mut wh, &key, &opts).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(wh.catalog.files("visit_occurrence").unwrap().is_empty());
    assert!(parquet_files(&fx.data.join("tables/visit_occurrence")).is_empty());
    // The same ingest then succeeds.
    let report = ingest::ingest(&mut wh, &key, &IngestOptions::new("visit_occurrence", &file)).unwrap();
    assert_eq!(report.rows, rows.len() as u64);
}

#[test]
fn a_killed_ingest_leaves_the_catalog_as_it_was_and_can_be_rerun() {
    let fx = Fixture::new(60_000, 6);
    let data = fx.data.to_str().unwrap();
    let file = fx.raw("visit_occurrence");
    let key = fx.key_file.to_str().unwrap();
    let mut killed_mid_write = false;
    for _attempt in 0..5 {
        let mut child = std::process::Command::new(BIN)
            .args(["ingest", "--data-dir", data, "--key-file", key, "--table", "visit_occurrence", "--file", file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until it has started writing Parquet into its staging directory, then kill -9.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if !parquet_files(&fx.data.join("staging")).is_empty() {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        let wh = fx.open();
        if finished || !wh.catalog.files("visit_occurrence").unwrap().is_empty() {
            // It committed before we could kill it: start over on a fresh table state.
            panic!("the ingest finished before it could be killed; make the input larger");
        }
        killed_mid_write = true;
        break;
    }
    assert!(killed_mid_write);
    let wh = fx.open();
    assert!(wh.catalog.files("visit_occurrence").unwrap().is_empty(), "nothing committed");
    assert!(parquet_files(&fx.data.join("tables/visit_occurrence")).is_empty(), "no partial file is visible");
    // Re-running the same ingest succeeds and sweeps what the killed one left.
    let out = secretum(&["ingest", "--data-dir", data, "--key-file", key, "--table", "visit_occurrence", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(parquet_files(&fx.data.join("staging")).is_empty(), "staging swept");
    let wh = fx.open();
    let (_, rows) = read_csv(&file);
    assert_eq!(wh.catalog.summary(["visit_occurrence".to_string()]).unwrap()[0].rows, rows.len() as u64);
}

#[test]
fn the_same_file_twice_is_refused_unless_allowed() {
    let fx = Fixture::new(50, 1);
    let mut wh = fx.open();
    let key = fx.key();
    ingest::ingest(&mut wh, &key, &IngestOptions::new("person", &fx.raw("person"))).unwrap();
    let file = fx.raw("condition_occurrence");
    ingest::ingest(&mut wh, &key, &IngestOptions::new("condition_occurrence", &file)).unwrap();
    let msg = ingest::ingest(&mut wh, &key, &IngestOptions::new("condition_occurrence", &file)).unwrap_err().to_string();
    assert!(msg.contains("already ingested into `condition_occurrence`") && msg.contains("--allow-duplicate"), "{msg}");
    assert_eq!(wh.catalog.files("condition_occurrence").unwrap().len(), 1);
    let mut opts = IngestOptions::new("condition_occurrence", &file);
    opts.allow_duplicate = true;
    ingest::ingest(&mut wh, &key, &opts).unwrap();
    assert_eq!(wh.catalog.files("condition_occurrence").unwrap().len(), 2);
    // A second copy of person is refused whatever: a patient is one row of person.
    let person = fx.raw("person");
    let mut opts = IngestOptions::new("person", &person);
    opts.allow_duplicate = true;
    let msg = ingest::ingest(&mut wh, &key, &opts).unwrap_err().to_string();
    assert!(msg.contains("this patient is already in the table"), "{msg}");
}

#[test]
fn keys_are_checked_before_anything_is_read() {
    let fx = Fixture::new(20, 1);
    let data = fx.data.to_str().unwrap();
    let file = fx.raw("person");
    let file = file.to_str().unwrap();
    // Missing key file.
    let out = secretum(&["ingest", "--data-dir", data, "--key-file", "/nonexistent/key", "--table", "person", "--file", file]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found: pass the steward's key with --key-file"), "{}", stderr(&out));
    // Another warehouse's key.
    let other = fx.path("other.key");
    Key::create_file(&other).unwrap();
    let out = secretum(&["ingest", "--data-dir", data, "--key-file", other.to_str().unwrap(), "--table", "person", "--file", file]);
    assert!(stderr(&out).contains("is not the key this warehouse was initialized with"), "{}", stderr(&out));
    // Loose permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fx.key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let out = secretum(&["ingest", "--data-dir", data, "--table", "person", "--file", file]);
        assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
        std::fs::set_permissions(&fx.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(fx.open().catalog.files("person").unwrap().is_empty());
    // The recorded key works.
    let out = secretum(&["ingest", "--data-dir", data, "--table", "person", "--file", file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ingested 20 rows into person"), "{}", stdout(&out));
}

#[test]
fn init_refuses_to_overwrite_a_warehouse_or_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("w");
    let key = dir.path().join("k");
    let out = secretum(&["init", "--data-dir", data.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64, "256-bit key in hex");
    let again = secretum(&["init", "--data-dir", data.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already a secretum warehouse"), "{}", stderr(&again));
    let other = secretum(&["init", "--data-dir", dir.path().join("w2").to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    assert!(stderr(&other).contains("refusing to overwrite"), "{}", stderr(&other));
    assert!(!dir.path().join("w2").join("catalog.sqlite").exists());
}

#[test]
fn ndjson_and_parquet_extracts_load_like_csv() {
    let fx = Fixture::new(100, 9);
    let (header, rows) = read_csv(&fx.raw("death"));
    // NDJSON, numbers as JSON numbers where they look like numbers.
    let mut nd = String::new();
    for r in &rows {
        let obj: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(r)
            .filter(|(_, v)| !v.is_empty())
            .map(|(h, v)| (h.clone(), v.parse::<i64>().map(serde_json::Value::from).unwrap_or_else(|_| serde_json::Value::from(v.clone()))))
            .collect();
        nd.push_str(&serde_json::Value::Object(obj).to_string());
        nd.push('\n');
    }
    let nd_file = fx.path("death.ndjson");
    std::fs::write(&nd_file, nd).unwrap();
    let mut wh = fx.open();
    let key = fx.key();
    let report = ingest::ingest(&mut wh, &key, &IngestOptions::new("death", &nd_file)).unwrap();
    assert_eq!(report.rows, rows.len() as u64);

    // Parquet with string columns.
    let fields: Vec<arrow::datatypes::Field> =
        header.iter().map(|h| arrow::datatypes::Field::new(h, arrow::datatypes::DataType::Utf8, true)).collect();
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let columns: Vec<arrow::array::ArrayRef> = (0..header.len())
        .map(|i| {
            std::sync::Arc::new(arrow::array::StringArray::from(
                rows.iter().map(|r| (!r[i].is_empty()).then(|| r[i].clone())).collect::<Vec<_>>(),
            )) as arrow::array::ArrayRef
        })
        .collect();
    let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), columns).unwrap();
    let pq_file = fx.path("death.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pq_file).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let mut opts = IngestOptions::new("death", &pq_file);
    opts.format = Some(Format::Parquet);
    let report = ingest::ingest(&mut wh, &key, &opts).unwrap();
    assert_eq!(report.rows, rows.len() as u64);
    // Same pseudonyms whatever the format.
    let ids = int_column(&wh, "death", "person_id");
    let n = rows.len();
    assert_eq!(ids[..n], ids[n..]);
}

#[test]
fn schema_directories_report_problems_by_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), "table = \"a\"\nmax_rows_per_unit = 0\n").unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "table = \"b\"\nmax_rows_per_unit = 1\n[[columns]]\nname = \"v\"\ntype = \"integer\"\nrole = \"attribute\"\ndomain = { vocabulary = \"missing.txt\" }\n",
    )
    .unwrap();
    let err = secretum_engine::schema::Schemas::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("a.toml: table a: max_rows_per_unit must be between 1 and 1000000, not 0"), "{err}");
    assert!(err.contains("a.toml: table a: no privacy_unit column"), "{err}");
    assert!(err.contains("b.toml: table b: column v: vocabulary `missing.txt`"), "{err}");
    // And init refuses such schemas before writing anything.
    let out = secretum(&["init", "--data-dir", dir.path().join("w").to_str().unwrap(), "--schemas", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid schema"), "{}", stderr(&out));
    assert!(!dir.path().join("w").exists());
}

#[test]
fn tables_lists_files_rows_and_bytes() {
    let fx = Fixture::new(40, 1);
    let data = fx.data.to_str().unwrap();
    let out = secretum(&["ingest", "--data-dir", data, "--table", "person", "--file", fx.raw("person").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = secretum(&["tables", "--data-dir", data]);
    let text = stdout(&out);
    let person = text.lines().find(|l| l.starts_with("person ")).unwrap();
    let fields: Vec<&str> = person.split_whitespace().collect();
    assert_eq!(fields[1..3], ["1", "40"], "{text}");
    assert!(text.lines().any(|l| l.starts_with("measurement ") && l.split_whitespace().nth(2) == Some("0")), "{text}");
}
