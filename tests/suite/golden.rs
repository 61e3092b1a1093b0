//! Golden cases of the allow-list and the bounded plan: every file in `tests/sql/` holds a
//! query and its expected outcome. Run with `SECRETUM_BLESS=1` to rewrite the expectations
//! after an intended change, then review the diff.
//!
//! A case file starts with header comments:
//!
//! ```text
//! -- expect: refused <rule>          or   -- expect: accepted
//! -- delta: 1e-6                     (optional: the query's δ)
//! -- max-groups: 2                   (optional: the query's groups-per-patient bound)
//! -- | <line of the plan summary>    (accepted cases: the bounded plan, one line each)
//! ```
//!
//! and the SQL follows (it may hold comments of its own).

use std::path::{Path, PathBuf};

use secretum_engine::Warehouse;
use secretum_engine::budget::Ledger;
use secretum_engine::dp::{self, QueryError, QueryRequest};

struct Case {
    path: PathBuf,
    expect: String,
    delta: Option<f64>,
    max_groups: Option<u32>,
    summary: Vec<String>,
    sql: String,
}

fn parse(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).expect("read case");
    let mut expect = String::new();
    let mut delta = None;
    let mut max_groups = None;
    let mut summary = Vec::new();
    let mut sql = Vec::new();
    let mut header = true;
    for line in text.lines() {
        if header {
            if let Some(e) = line.strip_prefix("-- expect: ") {
                expect = e.trim().to_owned();
                continue;
            }
            if let Some(d) = line.strip_prefix("-- delta: ") {
                delta = Some(d.trim().parse().expect("delta"));
                continue;
            }
            if let Some(g) = line.strip_prefix("-- max-groups: ") {
                max_groups = Some(g.trim().parse().expect("max-groups"));
                continue;
            }
            if let Some(s) = line.strip_prefix("-- | ") {
                summary.push(s.to_owned());
                continue;
            }
            header = false;
        }
        sql.push(line);
    }
    assert!(!expect.is_empty(), "{}: no `-- expect:` line", path.display());
    Case { path: path.to_owned(), expect, delta, max_groups, summary, sql: sql.join("\n").trim().to_owned() }
}

fn outcome(rt: &tokio::runtime::Runtime, wh: &Warehouse, ledger: &Ledger, case: &Case) -> (String, Vec<String>) {
    let req = QueryRequest {
        project: "golden".into(),
        sql: case.sql.clone(),
        epsilon: 1.0,
        delta: case.delta,
        max_groups: case.max_groups,
        ..Default::default()
    };
    match rt.block_on(dp::prepare(wh, ledger, &req)) {
        Ok(p) => ("accepted".into(), p.summary().lines().map(str::to_owned).collect()),
        Err(QueryError::Refused(r)) => (format!("refused {}", r.rule), vec![]),
        Err(other) => (format!("error {other}"), vec![]),
    }
}

#[test]
fn golden_sql_cases() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Warehouse::init(&data, Some(&dir.path().join("key")), None).unwrap();
    let wh = Warehouse::open(&data).unwrap();
    let mut ledger = Ledger::open(&data).unwrap();
    let tables: Vec<String> = wh.schemas.tables.keys().filter(|t| *t != "death").cloned().collect();
    ledger.create_project("golden", 10.0, 1e-4, &tables).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "sql")).collect();
    paths.sort();
    assert!(paths.len() >= 80, "only {} golden cases", paths.len());
    let bless = std::env::var_os("SECRETUM_BLESS").is_some();
    let mut failures = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for path in &paths {
        let case = parse(path);
        let (got, summary) = outcome(&rt, &wh, &ledger, &case);
        if got == "accepted" {
            accepted += 1;
        } else {
            refused += 1;
        }
        if got != case.expect || summary != case.summary {
            if bless {
                let mut text = format!("-- expect: {got}\n");
                if let Some(d) = case.delta {
                    text.push_str(&format!("-- delta: {d:e}\n"));
                }
                if let Some(g) = case.max_groups {
                    text.push_str(&format!("-- max-groups: {g}\n"));
                }
                for l in &summary {
                    text.push_str(&format!("-- | {l}\n"));
                }
                text.push_str(&case.sql);
                text.push('\n');
                std::fs::write(path, text).unwrap();
            }
            failures.push(format!(
                "{}:\n  expected {} {:?}\n  got      {} {:?}",
                case.path.file_name().unwrap().to_string_lossy(),
                case.expect,
                case.summary,
                got,
                summary
            ));
        }
    }
    println!("golden: {} cases, {accepted} accepted, {refused} refused", paths.len());
    assert!(accepted >= 20 && refused >= 40, "the corpus should exercise both sides: {accepted} accepted, {refused} refused");
    assert!(
        failures.is_empty() || bless,
        "{} golden case(s) differ (SECRETUM_BLESS=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The README's list of admitted functions is the engine's table, printed.
#[test]
fn readme_lists_exactly_the_admitted_functions() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let begin = text.find("<!-- functions:begin").expect("functions:begin marker");
    let start = text[begin..].find("```text\n").map(|i| begin + i + "```text\n".len()).expect("text block");
    let end = start + text[start..].find("```").expect("end of block");
    let listed = &text[start..end];
    let table = secretum_engine::dp::total::describe();
    if std::env::var_os("SECRETUM_BLESS").is_some() && listed != table {
        std::fs::write(&path, format!("{}{table}{}", &text[..start], &text[end..])).unwrap();
        return;
    }
    assert_eq!(listed, table, "README.md's function list differs from the engine's table: SECRETUM_BLESS=1 cargo test --test suite readme");
}
