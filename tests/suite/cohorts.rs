//! Cohort questions: per-patient relations, EXISTS / IN cohort filters and dates relative to an
//! index, answered on the noiseless test path and compared with plain DataFusion running the
//! same SQL on the same Parquet; and an adversarial patient with 100,000 diagnoses and
//! measurements moving each released aggregate of a cohort query by at most its sensitivity.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use datafusion::catalog::MemTable;
use datafusion::prelude::SessionContext;
use secretum_engine::budget::Ledger;
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::ingest::{self, IngestOptions};
use secretum_engine::{Warehouse, synth};
use serde_json::Value;

use crate::common::{Fixture, max_rows, read_table, rt};

const FIRST_T2D: &str = "SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id";

/// A warehouse with every synthetic table, a project on all of them, no suppression.
fn warehouse(fx: &Fixture) -> (Warehouse, Ledger) {
    let mut wh = fx.open();
    for t in synth::TABLES {
        ingest::ingest(&mut wh, &fx.key(), &IngestOptions::new(t, &fx.raw(t))).unwrap();
    }
    project(fx);
    (fx.open(), Ledger::open(&fx.data).unwrap())
}

fn project(fx: &Fixture) {
    let mut g = Governance::open(&fx.data).unwrap();
    let update = PolicyUpdate { patient_epsilon_cap: Some(1e12), suppression_threshold: Some(0), ..Default::default() };
    g.set_policy("test", &update).unwrap();
    let tables: Vec<String> = synth::TABLES.iter().map(|t| t.to_string()).collect();
    g.create_project("test", "cohort", 1e12, 0.9, &tables, &tables).unwrap();
}

/// The noiseless release: each row as (keys, aggregate values).
fn exact(rt: &tokio::runtime::Runtime, wh: &Warehouse, ledger: &mut Ledger, sql: &str) -> Vec<(Vec<Value>, Vec<Option<f64>>)> {
    let req = QueryRequest { actor: "test".into(), project: "cohort".into(), sql: sql.into(), epsilon: 1.0, ..Default::default() };
    let answer = rt.block_on(dp::run(wh, ledger, &req, Noise::Exact)).unwrap_or_else(|e| panic!("{sql}: {e}"));
    secretum_api::output::json(&answer)
        .rows
        .into_iter()
        .map(|row| {
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            for cell in row {
                match cell {
                    Value::Object(o) => values.push(o.get("value").and_then(Value::as_f64)),
                    other => keys.push(other),
                }
            }
            (keys, values)
        })
        .collect()
}

/// Plain DataFusion on the stored Parquet of every table: the same rows, no privacy at all.
fn plain(rt: &tokio::runtime::Runtime, wh: &Warehouse, sql: &str) -> Vec<(Vec<Value>, Vec<Option<f64>>)> {
    let ctx = SessionContext::new();
    for t in synth::TABLES {
        let batches = read_table(wh, t);
        let schema = batches[0].schema();
        ctx.register_table(t, Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())).unwrap();
    }
    let batches = rt.block_on(async { ctx.sql(sql).await.unwrap().collect().await.unwrap() });
    let mut rows = Vec::new();
    for b in batches {
        let n = b.num_columns();
        for r in 0..b.num_rows() {
            let cell = |c: usize| datafusion::common::ScalarValue::try_from_array(b.column(c), r).unwrap();
            let as_f64 = |c: usize| match cell(c).cast_to(&arrow::datatypes::DataType::Float64).unwrap() {
                datafusion::common::ScalarValue::Float64(v) => v,
                _ => None,
            };
            // The last column is the aggregate; the others are keys.
            let keys = (0..n - 1)
                .map(|c| match cell(c) {
                    v if v.is_null() => Value::Null,
                    datafusion::common::ScalarValue::Boolean(Some(x)) => Value::Bool(x),
                    v => serde_json::json!(as_f64_key(&v)),
                })
                .collect();
            rows.push((keys, vec![as_f64(n - 1)]));
        }
    }
    rows
}

fn as_f64_key(v: &datafusion::common::ScalarValue) -> f64 {
    match v.cast_to(&arrow::datatypes::DataType::Float64).unwrap() {
        datafusion::common::ScalarValue::Float64(Some(x)) => x,
        _ => f64::NAN,
    }
}

fn key_text(keys: &[Value]) -> String {
    keys.iter().map(|k| k.as_f64().map_or_else(|| k.to_string(), |x| format!("{x}"))).collect::<Vec<_>>().join("|")
}

#[test]
fn cohort_questions_on_the_noiseless_path_equal_plain_sql_on_the_same_parquet() {
    let rt = rt();
    let fx = Fixture::new(400, 21);
    let (wh, mut ledger) = warehouse(&fx);
    let f = FIRST_T2D;
    // (the DP query, the same question for the plain engine where its SQL differs)
    let cases: Vec<(String, Option<String>)> = vec![
        (format!("WITH f AS ({f}) SELECT COUNT(*) FROM f"), None),
        (format!("WITH f AS ({f}) SELECT AVG(EXTRACT(YEAR FROM f.d) - p.year_of_birth) FROM f JOIN person p ON p.person_id = f.person_id"), None),
        (
            "SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = p.person_id AND x.drug_source_value = 'A10BA02')"
                .into(),
            None,
        ),
        (
            "SELECT COUNT(*) FROM person p WHERE NOT EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = p.person_id AND c.condition_source_value LIKE 'I10%')"
                .into(),
            None,
        ),
        (
            "SELECT gender_concept_id, COUNT(*) FROM person WHERE person_id IN (SELECT person_id FROM condition_occurrence WHERE condition_source_value LIKE 'I10%') GROUP BY 1"
                .into(),
            None,
        ),
        (
            "SELECT COUNT(*) FROM person WHERE person_id IN (SELECT person_id FROM visit_occurrence GROUP BY person_id HAVING COUNT(*) >= 3)".into(),
            None,
        ),
        (
            format!(
                "WITH f AS ({f}), t AS (SELECT x.person_id FROM drug_exposure x JOIN f ON x.person_id = f.person_id WHERE x.drug_source_value = 'A10BA02' AND x.drug_exposure_start_date >= f.d GROUP BY x.person_id) SELECT COUNT(*) FROM t"
            ),
            None,
        ),
        // The example: patients by age at index, among those with two HbA1c tests after it.
        (
            format!(
                "WITH first_t2d AS ({f}), hba1c AS (SELECT m.person_id, COUNT(*) AS n_tests, AVG(m.value_as_number) AS mean_hba1c FROM measurement m JOIN first_t2d f ON m.person_id = f.person_id WHERE m.measurement_source_value = '4548-4' AND m.measurement_date >= f.d GROUP BY m.person_id) SELECT EXTRACT(YEAR FROM f.d) - p.year_of_birth AS age_at_index, COUNT(*) AS patients FROM first_t2d f JOIN person p ON p.person_id = f.person_id JOIN hba1c h ON h.person_id = f.person_id WHERE h.n_tests >= 2 AND f.d >= DATE '2015-01-01' GROUP BY 1"
            ),
            None,
        ),
        (
            format!(
                "WITH first_t2d AS ({f}), hba1c AS (SELECT m.person_id, COUNT(*) AS n_tests, AVG(m.value_as_number) AS mean_hba1c FROM measurement m JOIN first_t2d f ON m.person_id = f.person_id WHERE m.measurement_source_value = '4548-4' AND m.measurement_date >= f.d GROUP BY m.person_id) SELECT AVG(h.mean_hba1c) FROM first_t2d f JOIN hba1c h ON h.person_id = f.person_id WHERE h.n_tests >= 2"
            ),
            None,
        ),
        // No insulin before the index date: an anti-join comparing with the outer row.
        (
            format!(
                "WITH f AS ({f}) SELECT COUNT(*) FROM f WHERE NOT EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = f.person_id AND x.drug_source_value LIKE 'A10%' AND x.drug_exposure_start_date < f.d + INTERVAL '30 days')"
            ),
            None,
        ),
        // A cohort filtered from a per-patient relation: index from 2005, no insulin before it.
        (
            format!(
                "WITH f AS ({f}), c AS (SELECT f.person_id, f.d FROM f WHERE f.d >= DATE '2005-01-01' AND NOT EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = f.person_id AND x.drug_source_value LIKE 'A10A%' AND x.drug_exposure_start_date < f.d)) SELECT p.gender_concept_id, COUNT(*) FROM c JOIN person p ON p.person_id = c.person_id GROUP BY 1"
            ),
            None,
        ),
        // Months since the index, within a year of follow-up.
        (
            format!(
                "WITH f AS ({f}) SELECT (m.measurement_date - f.d) / 30 AS month, COUNT(*) FROM measurement m JOIN f ON m.person_id = f.person_id WHERE m.measurement_date >= f.d AND m.measurement_date < f.d + INTERVAL '365 days' GROUP BY 1"
            ),
            None,
        ),
        // Follow-up: observed for a year after the index.
        (
            format!(
                "WITH f AS ({f}) SELECT COUNT(*) FROM f JOIN observation_period o ON o.person_id = f.person_id WHERE o.observation_period_start_date <= f.d AND o.observation_period_end_date >= f.d + INTERVAL '1 year'"
            ),
            None,
        ),
        // Time to death or end of observation, in years, by sex: the Kaplan-Meier histogram.
        (
            format!(
                "WITH f AS ({f}), o AS (SELECT person_id, MAX(observation_period_end_date) AS e FROM observation_period GROUP BY person_id), x AS (SELECT person_id, MIN(death_date) AS dd FROM death GROUP BY person_id) SELECT p.gender_concept_id, LEAST(GREATEST((COALESCE(x.dd, o.e) - f.d) / 365, 0), 10) AS years, x.dd IS NOT NULL AS event, COUNT(*) FROM f JOIN person p ON p.person_id = f.person_id JOIN o ON o.person_id = f.person_id LEFT JOIN x ON x.person_id = f.person_id WHERE o.e >= f.d GROUP BY 1, 2, 3"
            ),
            None,
        ),
    ];
    let mut nonzero = 0;
    for (sql, plain_sql) in &cases {
        let got = exact(&rt, &wh, &mut ledger, sql);
        let want = plain(&rt, &wh, plain_sql.as_deref().unwrap_or(sql));
        let released: HashMap<String, Option<f64>> = got.iter().map(|(k, v)| (key_text(k), v[0])).collect();
        for (k, v) in &want {
            let truth = v[0].unwrap_or(0.0);
            let key = key_text(k);
            let Some(value) = released.get(&key) else { panic!("{sql}: group {key} (exact {truth}) is not released: {released:?}") };
            let value = value.unwrap_or(f64::NAN);
            assert!((value - truth).abs() <= 1e-3 * truth.abs().max(1.0), "{sql}: group {key}: released {value}, plain SQL {truth}");
            nonzero += (truth != 0.0) as usize;
        }
        // Groups the plain engine has no row for are empty: their counts are zero.
        let present: Vec<String> = want.iter().map(|(k, _)| key_text(k)).collect();
        for (k, v) in &released {
            if !present.contains(k) && sql.contains("COUNT(*)") && !sql.contains("AVG") {
                assert_eq!(v.unwrap_or(0.0), 0.0, "{sql}: group {k} has no rows but a count");
            }
        }
    }
    assert!(nonzero >= cases.len(), "the synthetic cohort should make most answers non-zero ({nonzero})");
}

/// One synthetic patient's raw rows, edited and repeated: a type 2 diabetic with `n` diagnoses
/// and `n` HbA1c measurements at the schema's upper bound.
fn adversary(dir: &std::path::Path, n: usize) -> Vec<(&'static str, std::path::PathBuf)> {
    let raw = dir.join("adversary-raw");
    let mut seed = 500;
    loop {
        synth::generate(1, seed, &raw, None).unwrap();
        let lines = |t: &str| std::fs::read_to_string(raw.join(format!("{t}.csv"))).unwrap().lines().count();
        if lines("condition_occurrence") > 1 && lines("measurement") > 1 && lines("observation_period") > 1 {
            break;
        }
        seed += 1;
    }
    let write = |table: &'static str, n: usize, edits: &[(&str, &str)]| {
        let text = std::fs::read_to_string(raw.join(format!("{table}.csv"))).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let row: Vec<String> = lines.next().unwrap().split(',').map(str::to_owned).collect();
        let out = dir.join(format!("adversary-{table}.csv"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
        writeln!(w, "{}", header.join(",")).unwrap();
        for i in 0..n {
            let mut r = row.clone();
            for (column, value) in edits {
                let c = header.iter().position(|h| h == column).unwrap_or_else(|| panic!("{table}.{column}"));
                r[c] = value.to_string();
            }
            if let Some(id) =
                header.iter().position(|h| h.ends_with("_id") && *h != "nir" && !h.contains("concept") && !h.contains("visit"))
            {
                r[id] = format!("{}", 800_000_000 + i);
            }
            writeln!(w, "{}", r.join(",")).unwrap();
        }
        (table, out)
    };
    vec![
        write("person", 1, &[]),
        write("observation_period", 1, &[("observation_period_start_date", "2000-01-01"), ("observation_period_end_date", "2025-06-30")]),
        write("condition_occurrence", n, &[("condition_source_value", "E11.9"), ("condition_start_date", "2016-03-01")]),
        write("measurement", n, &[("measurement_source_value", "4548-4"), ("measurement_date", "2016-06-01"), ("value_as_number", "500")]),
    ]
}

#[test]
fn an_adversarial_patient_moves_each_cohort_release_by_at_most_its_sensitivity() {
    let rt = rt();
    let honest = Fixture::new(150, 31);
    let attacked = Fixture::new(150, 31);
    let mut runs = Vec::new();
    for (i, fx) in [&honest, &attacked].into_iter().enumerate() {
        let (_, _) = warehouse(fx);
        if i == 1 {
            let mut wh = fx.open();
            for (t, f) in adversary(fx.dir.path(), 100_000) {
                ingest::ingest(&mut wh, &fx.key(), &IngestOptions::new(t, &f)).unwrap();
            }
        }
        runs.push((fx.open(), Ledger::open(&fx.data).unwrap()));
    }
    let f = FIRST_T2D;
    let hba1c = "SELECT m.person_id, COUNT(*) AS n, AVG(m.value_as_number) AS mean FROM measurement m JOIN f ON m.person_id = f.person_id WHERE m.measurement_source_value = '4548-4' AND m.measurement_date >= f.d GROUP BY m.person_id";
    let (km, kc, ko) = (max_rows("measurement"), max_rows("condition_occurrence"), max_rows("observation_period"));
    // (query, stated L1 sensitivity over all its groups, as the summary states it)
    let cases: Vec<(String, f64)> = vec![
        (format!("WITH f AS ({f}) SELECT COUNT(*) FROM f"), 1.0),
        (format!("WITH f AS ({f}), h AS ({hba1c}) SELECT SUM(h.mean) FROM f JOIN h ON h.person_id = f.person_id"), 500.0),
        (format!("WITH f AS ({f}), h AS ({hba1c}) SELECT SUM(h.n) FROM h"), km),
        (
            format!(
                "WITH f AS ({f}), h AS ({hba1c}) SELECT EXTRACT(YEAR FROM f.d) - p.year_of_birth AS age, COUNT(*) FROM f JOIN person p ON p.person_id = f.person_id JOIN h ON h.person_id = f.person_id WHERE h.n >= 2 GROUP BY 1"
            ),
            1.0,
        ),
        (format!("WITH f AS ({f}) SELECT COUNT(*) FROM measurement m JOIN f ON m.person_id = f.person_id WHERE m.measurement_date >= f.d"), km),
        (
            format!(
                "WITH f AS ({f}) SELECT (m.measurement_date - f.d) / 30 AS month, COUNT(*) FROM measurement m JOIN f ON m.person_id = f.person_id WHERE m.measurement_date >= f.d AND m.measurement_date < f.d + INTERVAL '365 days' GROUP BY 1"
            ),
            km,
        ),
        ("SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = p.person_id AND c.condition_source_value LIKE 'E11%')".into(), 1.0),
        ("SELECT COUNT(*) FROM person WHERE person_id IN (SELECT person_id FROM measurement GROUP BY person_id HAVING COUNT(*) > 1000)".into(), 1.0),
        ("SELECT SUM(t.n) FROM (SELECT person_id, COUNT(*) AS n FROM condition_occurrence GROUP BY person_id) t".into(), kc),
        (format!("WITH f AS ({f}) SELECT COUNT(*) FROM f JOIN observation_period o ON o.person_id = f.person_id WHERE o.observation_period_end_date >= f.d + INTERVAL '1 year'"), ko),
    ];
    for (sql, sensitivity) in &cases {
        let [a, b] = [0, 1].map(|i| {
            let (wh, ledger) = &mut runs[i];
            exact(&rt, wh, ledger, sql)
        });
        let index: HashMap<String, f64> = a.iter().map(|(k, v)| (key_text(k), v[0].unwrap_or(0.0))).collect();
        let mut moved = 0.0;
        for (k, v) in &b {
            moved += (v[0].unwrap_or(0.0) - index.get(&key_text(k)).copied().unwrap_or(0.0)).abs();
        }
        assert!(
            moved <= sensitivity + 1e-6,
            "{sql}: the adversarial patient moved the release by {moved}, over its sensitivity {sensitivity}"
        );
        assert!(moved > 0.0, "{sql}: the adversarial patient should be visible at all (test data check)");
    }
}
