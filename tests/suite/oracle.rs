//! Oracle pairs: the outcome of a query (answered or refused, and by which rule) must be the same
//! on two neighbouring warehouses, one with an extra patient whose rows match the query and one
//! without. A query that fails only when that patient is there is a yes/no oracle.
//!
//! The queries are generated from the engine's table of admitted functions
//! ([`secretum_engine::dp::total::FUNCTIONS`]), not picked by hand: for every function and
//! operator, and every argument, each data-dependent extreme of the argument's kind (zero,
//! negative, overflowing, out of range, an invalid pattern, an empty string, ...) is put into
//! that argument inside `CASE WHEN <matches the extra patient>`, and the expression is used in
//! WHERE, in an aggregate's argument, in a group key and in a clamped SUM. Random nestings of
//! admitted functions (proptest) go through the same check.

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use secretum_engine::Warehouse;
use secretum_engine::budget::Ledger;
use secretum_engine::dp::total::{Arg, FUNCTIONS};
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::error::Error;
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::ingest::{self, IngestOptions};

use crate::common::{Fixture, rt};

/// The extra patient, and only them: born in 1901 (the synthetic population is younger).
const TARGET: &str = "p.year_of_birth = 1901";
const FROM: &str = "FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id";
const TABLES: [&str; 3] = ["person", "condition_occurrence", "measurement"];

/// Values that make some function raise an error, overflow or misbehave, per argument kind.
fn extremes(kind: Arg) -> &'static [&'static str] {
    match kind {
        Arg::Int => &["0", "-1", "9223372036854775807", "(-9223372036854775807 - 1)", "4611686018427387904 * 2", "NULL"],
        Arg::Float => &["0.0", "-1.5", "1e308 * 10", "CAST('NaN' AS DOUBLE)", "-1e308", "NULL"],
        Arg::Text => &["''", "'%'", "'('", "'99999999999999999999999'", "'2026-13-45'", "'ß\u{301}'", "NULL"],
        Arg::Date => &["DATE '1970-01-01'", "CAST('9999-12-31' AS DATE)", "CAST('0001-01-01' AS DATE)", "NULL"],
        Arg::Bool => &["NULL", "false", "true"],
        Arg::Part => &["'nonsense'", "'epoch'", "'microsecond'"],
        Arg::Pattern => &["'('", "'%'", "''", "'\\'", "'[a-'", "'_%_'", "NULL"],
    }
}

/// An ordinary value of each kind, read from the data.
fn normal(kind: Arg) -> &'static str {
    match kind {
        Arg::Int => "p.year_of_birth",
        Arg::Float => "(p.year_of_birth * 1.5)",
        Arg::Text => "c.condition_source_value",
        Arg::Date => "c.condition_start_date",
        Arg::Bool => "(p.year_of_birth > 1950)",
        Arg::Part => "'year'",
        Arg::Pattern => "'E1%'",
    }
}

fn fill(template: &str, args: &[String]) -> String {
    let mut s = template.to_owned();
    for (i, a) in args.iter().enumerate() {
        s = s.replace(&format!("{{{i}}}"), &format!("({a})"));
    }
    s
}

/// The queries that place an expression in each context. (sql, needs δ)
fn contexts(e: &str) -> [String; 4] {
    [
        format!("SELECT COUNT(*) {FROM} WHERE ({e}) IS NOT NULL"),
        format!("SELECT COUNT({e}) {FROM}"),
        format!("SELECT {e} AS k, COUNT(*) {FROM} GROUP BY 1"),
        format!("SELECT SUM(LEAST(GREATEST(TRY_CAST({e} AS DOUBLE), -1000), 1000)) {FROM}"),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Answered,
    Refused(String),
    Failed,
    Budget,
    Internal,
}

/// A warehouse with the synthetic population, and the same plus the extra patient.
struct Pair {
    _base: Fixture,
    _extra: Fixture,
    warehouses: [(Warehouse, Ledger); 2],
}

fn extra_patient_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    // A synthetic patient with conditions and measurements, born in 1901.
    let raw = dir.join("extra-raw");
    let mut seed = 7000;
    loop {
        secretum_engine::synth::generate(1, seed, &raw, None).unwrap();
        let lines = |t: &str| std::fs::read_to_string(raw.join(format!("{t}.csv"))).unwrap().lines().count();
        if lines("condition_occurrence") > 2 && lines("measurement") > 1 {
            break;
        }
        seed += 1;
    }
    let person = std::fs::read_to_string(raw.join("person.csv")).unwrap();
    let mut lines = person.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let mut row: Vec<String> = lines.next().unwrap().split(',').map(str::to_owned).collect();
    let b = header.iter().position(|h| *h == "birth_date").unwrap();
    row[b] = "1901-06-15".into();
    let out = dir.join("extra-person.csv");
    let mut w = std::fs::File::create(&out).unwrap();
    writeln!(w, "{}\n{}", header.join(","), row.join(",")).unwrap();
    (out, raw.join("condition_occurrence.csv"), raw.join("measurement.csv"))
}

fn pair() -> Pair {
    let base = Fixture::new(40, 11);
    let extra = Fixture::new(40, 11);
    for fx in [&base, &extra] {
        let mut wh = fx.open();
        for t in TABLES {
            ingest::ingest(&mut wh, &fx.key(), &IngestOptions::new(t, &fx.raw(t))).unwrap();
        }
    }
    let (p, c, m) = extra_patient_files(extra.dir.path());
    {
        let mut wh = extra.open();
        for (t, f) in [("person", &p), ("condition_occurrence", &c), ("measurement", &m)] {
            ingest::ingest(&mut wh, &extra.key(), &IngestOptions::new(t, f)).unwrap();
        }
    }
    let open = |fx: &Fixture| {
        let mut g = Governance::open(&fx.data).unwrap();
        let update = PolicyUpdate {
            patient_epsilon_cap: Some(1e12),
            patient_delta_cap: Some(0.99),
            suppression_threshold: Some(0),
            ..Default::default()
        };
        g.set_policy("oracle-test", &update).unwrap();
        let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
        g.create_project("oracle-test", "oracle", 1e12, 0.9, &tables, &tables).unwrap();
        (fx.open(), Ledger::open(&fx.data).unwrap())
    };
    let warehouses = [open(&base), open(&extra)];
    Pair { _base: base, _extra: extra, warehouses }
}

impl Pair {
    fn outcomes(&mut self, rt: &tokio::runtime::Runtime, sql: &str) -> [Outcome; 2] {
        let req = QueryRequest {
            actor: "oracle-test".into(),
            project: "oracle".into(),
            sql: sql.into(),
            epsilon: 1.0,
            delta: Some(1e-6),
            ..Default::default()
        };
        self.warehouses.each_mut().map(|(wh, ledger)| match rt.block_on(dp::run(wh, ledger, &req, Noise::Exact)) {
            Ok(_) => Outcome::Answered,
            Err(Error::Refused { rule, .. }) => Outcome::Refused(rule.name().to_owned()),
            Err(Error::QueryFailed { .. }) => Outcome::Failed,
            Err(Error::Budget(_)) => Outcome::Budget,
            Err(_) => Outcome::Internal,
        })
    }

    fn exact_count(&mut self, rt: &tokio::runtime::Runtime, i: usize, sql: &str) -> f64 {
        let (wh, ledger) = &mut self.warehouses[i];
        let req =
            QueryRequest { actor: "oracle-test".into(), project: "oracle".into(), sql: sql.into(), epsilon: 1.0, ..Default::default() };
        let a = rt.block_on(dp::run(wh, ledger, &req, Noise::Exact)).unwrap();
        secretum_api::output::json(&a).rows[0][0]["value"].as_f64().unwrap()
    }
}

#[test]
fn every_admitted_function_with_extreme_values_has_the_same_outcome_with_and_without_the_patient() {
    let rt = rt();
    let mut pair = pair();
    // The neighbours differ by the extra patient, and the target condition sees only them.
    let probe = format!("SELECT COUNT(*) {FROM} WHERE {TARGET}");
    assert_eq!(pair.exact_count(&rt, 0, &probe), 0.0, "the base population must not match the target");
    assert!(pair.exact_count(&rt, 1, &probe) > 0.0, "the extra patient must match the target");

    let mut mismatches = Vec::new();
    let mut failures = Vec::new();
    let mut answered = vec![0usize; FUNCTIONS.len()];
    let mut runs = 0;
    for (f, entry) in FUNCTIONS.iter().enumerate() {
        let mut n = 0usize;
        for (i, kind) in entry.args.iter().enumerate() {
            for extreme in extremes(*kind) {
                let args: Vec<String> =
                    entry
                        .args
                        .iter()
                        .enumerate()
                        .map(|(j, k)| {
                            if j == i {
                                format!("CASE WHEN {TARGET} THEN {extreme} ELSE {} END", normal(*k))
                            } else {
                                normal(*k).to_owned()
                            }
                        })
                        .collect();
                let expr = fill(entry.sql, &args);
                // Every context for the first extreme of each argument; then one context per
                // extreme in turn, so every (function, argument, extreme) runs at least once.
                let chosen: Vec<String> = if n == 0 { contexts(&expr).to_vec() } else { vec![contexts(&expr)[n % 4].clone()] };
                n += 1;
                for sql in chosen {
                    runs += 1;
                    let [a, b] = pair.outcomes(&rt, &sql);
                    if a == Outcome::Answered {
                        answered[f] += 1;
                    }
                    for o in [&a, &b] {
                        if matches!(o, Outcome::Failed | Outcome::Internal | Outcome::Budget) {
                            failures.push(format!("{o:?}: {sql}"));
                        }
                    }
                    if a != b {
                        mismatches.push(format!("without the patient {a:?}, with {b:?}: {sql}"));
                    }
                }
            }
        }
    }
    println!("oracle pairs: {runs} queries over {} admitted functions", FUNCTIONS.len());
    assert!(mismatches.is_empty(), "{} oracle(s):\n{}", mismatches.len(), mismatches.join("\n"));
    assert!(failures.is_empty(), "{} queries failed after analysis (total semantics broken):\n{}", failures.len(), failures.join("\n"));
    let never: Vec<&str> = FUNCTIONS.iter().zip(&answered).filter(|(_, n)| **n == 0).map(|(f, _)| f.sql).collect();
    assert!(never.is_empty(), "these admitted functions were never answered, so the test says nothing about them: {never:?}");
}

#[test]
fn the_published_attacks_have_the_same_outcome_with_and_without_the_patient() {
    let rt = rt();
    let mut pair = pair();
    for sql in [
        format!("SELECT SUM(p.year_of_birth / CAST(0.5 AS BIGINT)) {FROM} WHERE {TARGET}"),
        format!("SELECT COUNT(p.year_of_birth / CAST(0.5 AS BIGINT)) {FROM} WHERE {TARGET} AND c.condition_source_value LIKE '%'"),
        format!("SELECT COUNT(*) {FROM} WHERE abs(CASE WHEN {TARGET} THEN 4611686018427387904 * 2 ELSE 0 END) >= 0"),
        format!("SELECT COUNT(*) {FROM} WHERE CAST(CASE WHEN {TARGET} THEN 'x' ELSE '1' END AS BIGINT) >= 0"),
        format!("SELECT COUNT(*) {FROM} WHERE substr(c.condition_source_value, 1, CASE WHEN {TARGET} THEN -1 ELSE 2 END) = 'E1'"),
        format!("SELECT COUNT(*) {FROM} WHERE c.condition_source_value SIMILAR TO CASE WHEN {TARGET} THEN '(' ELSE 'E.*' END"),
        format!("SELECT SUM(LEAST(GREATEST(p.year_of_birth % CASE WHEN {TARGET} THEN 0 ELSE 7 END, 0), 6)) {FROM}"),
        format!("SELECT AVG(LEAST(GREATEST(CASE WHEN {TARGET} THEN 1e308 * 10 ELSE 1.0 END, 0), 2)) {FROM}"),
    ] {
        let [a, b] = pair.outcomes(&rt, &sql);
        assert_eq!(a, b, "an oracle: {sql}");
        assert!(!matches!(a, Outcome::Failed | Outcome::Internal), "{a:?}: {sql}");
    }
}

/// A random expression built from admitted functions, with extreme or normal leaves of the
/// kind each argument wants; some leaves only for the extra patient.
fn nested() -> impl Strategy<Value = String> {
    let leaf = |kind: Arg| {
        let options: Vec<String> = extremes(kind)
            .iter()
            .map(|x| format!("CASE WHEN {TARGET} THEN {x} ELSE {} END", normal(kind)))
            .chain([normal(kind).to_owned()])
            .collect();
        proptest::sample::select(options)
    };
    // Outer function, inner function for its first argument (when kinds agree), leaves elsewhere.
    (0..FUNCTIONS.len(), 0..FUNCTIONS.len(), any::<u64>()).prop_flat_map(move |(outer, inner, _)| {
        let o = &FUNCTIONS[outer];
        let i = &FUNCTIONS[inner];
        let inner_args: Vec<BoxedStrategy<String>> = i.args.iter().map(|k| leaf(*k).boxed()).collect();
        let outer_args: Vec<BoxedStrategy<String>> = o.args.iter().map(|k| leaf(*k).boxed()).collect();
        (inner_args, outer_args).prop_map(move |(ia, mut oa)| {
            let inner_expr = fill(i.sql, &ia);
            if !oa.is_empty() {
                // Nest when the inner result can stand where the outer's first argument goes.
                oa[0] = format!("TRY_CAST(({inner_expr}) AS {})", sql_type(o.args[0]));
            }
            fill(o.sql, &oa)
        })
    })
}

fn sql_type(kind: Arg) -> &'static str {
    match kind {
        Arg::Int => "BIGINT",
        Arg::Float => "DOUBLE",
        Arg::Text | Arg::Part | Arg::Pattern => "VARCHAR",
        Arg::Date => "DATE",
        Arg::Bool => "BOOLEAN",
    }
}

#[test]
fn random_nestings_of_admitted_functions_are_no_oracle() {
    let rt = rt();
    let pair = std::cell::RefCell::new(pair());
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config { cases: 96, ..Default::default() });
    let result = runner.run(&(nested(), 0usize..4), |(expr, context)| {
        let sql = contexts(&expr)[context].clone();
        let [a, b] = pair.borrow_mut().outcomes(&rt, &sql);
        prop_assert_eq!(&a, &b, "an oracle: {}", sql);
        prop_assert!(!matches!(a, Outcome::Failed | Outcome::Internal), "{:?}: {}", a, sql);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The contexts of a cohort query that place an expression inside a subquery: a per-patient
/// relation's WHERE and aggregate, an EXISTS and an IN. A failure there is the same oracle.
fn subquery_contexts(e: &str) -> [String; 5] {
    [
        format!("WITH f AS (SELECT p.person_id, COUNT(*) AS n {FROM} WHERE ({e}) IS NOT NULL GROUP BY p.person_id) SELECT COUNT(*) FROM f"),
        format!("WITH f AS (SELECT p.person_id, COUNT({e}) AS n {FROM} GROUP BY p.person_id) SELECT SUM(f.n) FROM f"),
        format!("SELECT COUNT(*) FROM person q WHERE EXISTS (SELECT 1 {FROM} WHERE p.person_id = q.person_id AND ({e}) IS NOT NULL)"),
        format!("SELECT COUNT(*) FROM person WHERE person_id IN (SELECT p.person_id {FROM} WHERE ({e}) IS NOT NULL)"),
        format!(
            "SELECT COUNT(*) FROM person q WHERE NOT EXISTS (SELECT 1 {FROM} WHERE p.person_id = q.person_id AND ({e}) IS NOT NULL AND EXTRACT(YEAR FROM c.condition_start_date) >= q.year_of_birth)"
        ),
    ]
}

#[test]
fn admitted_functions_inside_subqueries_have_the_same_outcome_with_and_without_the_patient() {
    let rt = rt();
    let mut pair = pair();
    let mut mismatches = Vec::new();
    let (mut runs, mut answered) = (0, 0);
    for entry in FUNCTIONS {
        for (i, kind) in entry.args.iter().enumerate() {
            // The first extreme of each argument, in every subquery context.
            let Some(extreme) = extremes(*kind).first() else { continue };
            let args: Vec<String> = entry
                .args
                .iter()
                .enumerate()
                .map(
                    |(j, k)| {
                        if j == i { format!("CASE WHEN {TARGET} THEN {extreme} ELSE {} END", normal(*k)) } else { normal(*k).to_owned() }
                    },
                )
                .collect();
            for sql in subquery_contexts(&fill(entry.sql, &args)) {
                runs += 1;
                let [a, b] = pair.outcomes(&rt, &sql);
                answered += (a == Outcome::Answered) as usize;
                if a != b || matches!(a, Outcome::Failed | Outcome::Internal | Outcome::Budget) {
                    mismatches.push(format!("without the patient {a:?}, with {b:?}: {sql}"));
                }
            }
        }
    }
    println!("oracle pairs inside subqueries: {runs} queries, {answered} answered");
    assert!(mismatches.is_empty(), "{} oracle(s) or failure(s):\n{}", mismatches.len(), mismatches.join("\n"));
    assert!(answered * 4 >= runs * 3, "most subquery contexts should be answered, or the test says little: {answered} of {runs}");
}

/// Total semantics change what an error would have been into NULL, never an ordinary answer:
/// every admitted function on ordinary values gives what plain DataFusion gives on the same
/// Parquet (on the noiseless test path).
#[test]
fn admitted_functions_on_ordinary_values_answer_what_plain_sql_answers() {
    use datafusion::catalog::MemTable;
    let rt = rt();
    let mut pair = pair();
    let ctx = datafusion::prelude::SessionContext::new();
    for t in TABLES {
        let batches = crate::common::read_table(&pair.warehouses[0].0, t);
        ctx.register_table(t, std::sync::Arc::new(MemTable::try_new(batches[0].schema(), vec![batches]).unwrap())).unwrap();
    }
    // Plain DataFusion's answer, when it has one (it cannot TRY_CAST a date to a number, ...).
    let plain = |sql: &str| -> Option<f64> {
        let batches = rt.block_on(async { ctx.sql(sql).await?.collect().await }).ok()?;
        let v = datafusion::common::ScalarValue::try_from_array(batches[0].column(0), 0).ok()?;
        match v.cast_to(&arrow::datatypes::DataType::Float64).ok()? {
            datafusion::common::ScalarValue::Float64(x) => Some(x.unwrap_or(0.0)),
            _ => None,
        }
    };
    let mut compared = 0;
    let mut wrong = Vec::new();
    for entry in FUNCTIONS {
        let args: Vec<String> = entry.args.iter().map(|k| normal(*k).to_owned()).collect();
        let e = fill(entry.sql, &args);
        // Patients within the join's bound (10 conditions), whose rows truncation keeps whole.
        let within = "p.person_id IN (SELECT person_id FROM condition_occurrence GROUP BY person_id HAVING COUNT(*) <= 10)";
        // Where plain SQL raises an error on these values (a text that is not a number, cast),
        // total semantics answer NULL by design: nothing to compare.
        if rt.block_on(async { ctx.sql(&format!("SELECT ({e}) AS v {FROM} WHERE {within}")).await?.collect().await }).is_err() {
            continue;
        }
        // NaN clamps differently in plain SQL's GREATEST/LEAST and in the release's clamp.
        let nan = plain(&format!("SELECT COUNT(*) {FROM} WHERE {within} AND isnan(TRY_CAST(({e}) AS DOUBLE))")).unwrap_or(0.0) > 0.0;
        for sql in [
            format!("SELECT COUNT(*) {FROM} WHERE {within} AND ({e}) IS NOT NULL"),
            format!("SELECT SUM(LEAST(GREATEST(TRY_CAST(({e}) AS DOUBLE), -1000), 1000)) {FROM} WHERE {within}"),
        ] {
            let Some(want) = plain(&sql).filter(|_| !(nan && sql.contains("SUM"))) else { continue };
            compared += 1;
            let got = pair.exact_count(&rt, 0, &sql);
            if (got - want).abs() > 1e-3 * want.abs().max(1.0) {
                wrong.push(format!("{got} instead of {want}: {sql}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{} function(s) answer differently from plain SQL:\n{}", wrong.len(), wrong.join("\n"));
    assert!(compared >= FUNCTIONS.len(), "plain DataFusion answered only {compared} of the comparisons");
}
