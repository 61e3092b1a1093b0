//! Golden cases of the allow-list and the bounded plan, by topic: every file in `tests/sql/`
//! holds cases of one rule family, each a query and its expected outcome. Run with
//! `SECRETUM_BLESS=1` to rewrite the expectations after an intended change, then review the diff.
//!
//! ```text
//! # a comment
//!
//! == a case's name [delta=1e-6] [max-groups=3] [epsilon=0.5] [target-ci=10] [pad-to=70000]
//! SELECT ...
//! -> refused <rule>
//!
//! == another case
//! SELECT ...
//! -> accepted
//!    tables: person (≤ 1 per patient)
//!    rows per patient: 1
//!    groups: none
//!    aggregate 1: count of rows; rows Δ 1
//! ```
//!
//! The plan summary is in secretum's own words (aggregate kind, column, bounds, Δ, where the
//! groups come from), not DataFusion's display names, so it reads like the spec of the SQL we
//! answer and survives a DataFusion upgrade.

use std::path::{Path, PathBuf};

use secretum_engine::Warehouse;
use secretum_engine::dp::{self, QueryRequest, Rule};
use secretum_engine::error::Error;
use secretum_engine::governance::Governance;

#[derive(Debug, Clone)]
struct Case {
    name: String,
    options: Vec<(String, String)>,
    sql: String,
    expect: String,
    summary: Vec<String>,
}

impl Case {
    fn option(&self, key: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A topic file: its leading comment, then its cases.
fn parse(path: &Path) -> (String, Vec<Case>) {
    let text = std::fs::read_to_string(path).expect("read cases");
    let mut head = String::new();
    let mut cases: Vec<Case> = Vec::new();
    let mut in_expect = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("== ") {
            let (name, options) = match rest.find(" [") {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let options = options
                .split(']')
                .filter_map(|o| o.trim().strip_prefix('['))
                .filter_map(|o| o.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
                .collect();
            cases.push(Case { name: name.trim().to_owned(), options, sql: String::new(), expect: String::new(), summary: Vec::new() });
            in_expect = false;
            continue;
        }
        let Some(case) = cases.last_mut() else {
            head.push_str(line);
            head.push('\n');
            continue;
        };
        if let Some(e) = line.strip_prefix("-> ") {
            case.expect = e.trim().to_owned();
            in_expect = true;
        } else if in_expect {
            if let Some(s) = line.strip_prefix("   ") {
                case.summary.push(s.to_owned());
            }
        } else {
            case.sql.push_str(line);
            case.sql.push('\n');
        }
    }
    for c in &mut cases {
        c.sql = c.sql.trim().to_owned();
        assert!(!c.expect.is_empty(), "{}: case {:?} has no `-> ` expectation", path.display(), c.name);
    }
    (head, cases)
}

fn render(head: &str, cases: &[Case]) -> String {
    let mut out = head.trim_end().to_owned();
    out.push_str("\n\n");
    for c in cases {
        out.push_str(&format!("== {}", c.name));
        for (k, v) in &c.options {
            out.push_str(&format!(" [{k}={v}]"));
        }
        out.push('\n');
        out.push_str(&c.sql);
        out.push_str(&format!("\n-> {}\n", c.expect));
        for s in &c.summary {
            out.push_str(&format!("   {s}\n"));
        }
        out.push('\n');
    }
    out.trim_end().to_owned() + "\n"
}

fn outcome(rt: &tokio::runtime::Runtime, wh: &Warehouse, case: &Case) -> (String, Vec<String>) {
    let mut sql = case.sql.clone();
    if let Some(n) = case.option("pad-to").and_then(|n| n.parse::<usize>().ok()) {
        sql.push_str("\n-- ");
        while sql.len() < n {
            sql.push_str("padding ");
        }
    }
    let req = QueryRequest {
        actor: "golden".into(),
        project: "golden".into(),
        sql,
        epsilon: case.option("epsilon").map_or(1.0, |e| e.parse().expect("epsilon")),
        delta: case.option("delta").map(|d| d.parse().expect("delta")),
        max_groups: case.option("max-groups").map(|g| g.parse().expect("max-groups")),
        target_ci: case.option("target-ci").map(|t| t.parse().expect("target-ci")),
        ..Default::default()
    };
    match rt.block_on(dp::prepare(wh, &req)) {
        Ok(p) => ("accepted".into(), p.summary().lines().map(str::to_owned).collect()),
        Err(Error::Refused { rule, .. }) => (format!("refused {rule}"), vec![]),
        Err(other) => (format!("error {other}"), vec![]),
    }
}

fn case_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "sql")).collect();
    paths.sort();
    paths
}

#[test]
fn golden_sql_cases() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Warehouse::init(&data, Some(&dir.path().join("key")), None).unwrap();
    let wh = Warehouse::open(&data).unwrap();
    let tables: Vec<String> = wh.schemas.tables.keys().filter(|t| *t != "death").cloned().collect();
    let known: Vec<String> = wh.schemas.tables.keys().cloned().collect();
    Governance::open(&data).unwrap().create_project("golden", "golden", 10.0, 1e-4, &tables, &known).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let bless = std::env::var_os("SECRETUM_BLESS").is_some();
    let mut failures = Vec::new();
    let (mut accepted, mut refused, mut total) = (0, 0, 0);
    let mut rules_seen = std::collections::BTreeSet::new();
    for path in case_files() {
        let (head, mut cases) = parse(&path);
        let mut changed = false;
        for case in &mut cases {
            total += 1;
            let (got, summary) = outcome(&rt, &wh, case);
            if got == "accepted" {
                accepted += 1;
            } else {
                refused += 1;
            }
            if let Some(rule) = got.strip_prefix("refused ") {
                rules_seen.insert(rule.to_owned());
            }
            if got != case.expect || summary != case.summary {
                failures.push(format!(
                    "{} / {}:\n  expected {} {:?}\n  got      {} {:?}",
                    path.file_name().unwrap().to_string_lossy(),
                    case.name,
                    case.expect,
                    case.summary,
                    got,
                    summary
                ));
                case.expect = got;
                case.summary = summary;
                changed = true;
            }
        }
        if bless && changed {
            std::fs::write(&path, render(&head, &cases)).unwrap();
        }
    }
    println!("golden: {total} cases, {accepted} accepted, {refused} refused");
    assert!(accepted >= 60 && refused >= 80, "the corpus should exercise both sides: {accepted} accepted, {refused} refused");
    assert!(
        failures.is_empty() || bless,
        "{} golden case(s) differ (SECRETUM_BLESS=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every rule of the allow-list is shown refusing at least one query.
    let missing: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).filter(|r| !rules_seen.contains(*r)).collect();
    assert!(missing.is_empty(), "rules without a golden case: {missing:?}");
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
