//! Local (steward-side) commands: projects, policy, and queries against the data directory.

use std::path::Path;

use secretum_engine::budget::{Ledger, PolicyUpdate};
use secretum_engine::dp::{self, Answer, Noise, QueryError, QueryRequest};
use secretum_engine::{Error, Result, Warehouse};

use crate::cli::{PolicyCommand, ProjectCommand, QueryArgs};

fn ledger(data_dir: &Path) -> Result<(Warehouse, Ledger)> {
    let wh = Warehouse::open(data_dir)?;
    let ledger = Ledger::open(data_dir)?;
    Ok((wh, ledger))
}

pub fn project(data_dir: &Path, cmd: ProjectCommand) -> Result<()> {
    let (wh, mut ledger) = ledger(data_dir)?;
    match cmd {
        ProjectCommand::Create { name, epsilon, delta, tables } => {
            let tables: Vec<String> = tables.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
            for t in &tables {
                if !wh.schemas.tables.contains_key(t) {
                    let known: Vec<&str> = wh.schemas.tables.keys().map(String::as_str).collect();
                    return Err(Error::Usage(format!("unknown table {t:?}; the warehouse has {}", known.join(", "))));
                }
            }
            let p = ledger.create_project(&name, epsilon, delta, &tables)?;
            println!("created project {} (ε {}, δ {:e}) on tables {}", p.name, p.epsilon, p.delta, p.tables.join(", "));
            Ok(())
        }
        ProjectCommand::List => {
            println!(
                "{:<24} {:<8} {:>10} {:>10} {:>10} {:>10}  tables",
                "project", "status", "ε granted", "ε spent", "δ granted", "δ spent"
            );
            for p in ledger.projects()? {
                println!(
                    "{:<24} {:<8} {:>10} {:>10.4} {:>10.1e} {:>10.1e}  {}",
                    p.name,
                    p.status,
                    p.epsilon,
                    p.epsilon_spent,
                    p.delta,
                    p.delta_spent,
                    p.tables.join(",")
                );
            }
            Ok(())
        }
        ProjectCommand::Show { name } => {
            let p = ledger.project(&name)?.ok_or_else(|| Error::Usage(format!("project {name:?} does not exist")))?;
            println!("project {} ({}), created {}", p.name, p.status, p.created_at);
            println!("tables: {}", p.tables.join(", "));
            println!("ε: {} granted, {:.6} spent, {:.6} left", p.epsilon, p.epsilon_spent, p.epsilon_remaining());
            println!("δ: {:e} granted, {:e} spent, {:e} left", p.delta, p.delta_spent, p.delta_remaining());
            for (id, e, d, status, at) in ledger.history(&name)? {
                println!("  #{id:<6} {at}  ε {e:<8} δ {d:<8e} {status}");
            }
            Ok(())
        }
    }
}

pub fn policy(data_dir: &Path, cmd: PolicyCommand) -> Result<()> {
    let (_wh, mut ledger) = ledger(data_dir)?;
    let p = match cmd {
        PolicyCommand::Set { patient_epsilon_cap, query_epsilon_cap, suppression_threshold, round_digits } => {
            ledger.set_policy(&PolicyUpdate { patient_epsilon_cap, query_epsilon_cap, suppression_threshold, round_digits })?
        }
        PolicyCommand::Show => ledger.policy()?,
    };
    println!("patient ε cap (all projects together): {}", p.patient_epsilon_cap);
    println!("per-query ε cap:                       {}", p.query_epsilon_cap);
    println!("small-cell suppression threshold:      {}", p.suppression_threshold);
    println!("rounding of non-count values:          {} decimal digits", p.round_digits);
    println!("ε spent by all projects:               {:.6}", ledger.warehouse_epsilon_spent()?);
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Error::Usage(format!("cannot start the runtime: {e}")))
}

/// Run one query locally and print it in the asked format.
pub fn query(data_dir: &Path, args: &QueryArgs) -> Result<()> {
    let format = args.format.as_str();
    if !matches!(format, "table" | "json" | "csv") {
        return Err(Error::Usage(format!("unknown --format {format:?}: expected table, json or csv")));
    }
    let (wh, mut ledger) = ledger(data_dir)?;
    let req = QueryRequest {
        project: args.project.clone(),
        sql: args.sql.clone(),
        epsilon: args.epsilon,
        delta: args.delta,
        dry_run: args.dry_run,
        target_ci: args.target_ci,
        max_groups: args.max_groups,
    };
    let answer = runtime()?.block_on(dp::run(&wh, &mut ledger, &req, Noise::OpenDp)).map_err(query_error)?;
    print_answer(&answer, format);
    Ok(())
}

fn query_error(e: QueryError) -> Error {
    match e {
        QueryError::Internal(e) => e,
        other => Error::Usage(other.to_string()),
    }
}

pub fn print_answer(a: &Answer, format: &str) {
    match format {
        "json" => println!("{}", serde_json::to_string(a).unwrap_or_default()),
        "csv" => {
            let mut header = Vec::new();
            for (i, c) in a.columns.iter().enumerate() {
                if a.rows.iter().any(|r| r[i].is_object()) {
                    header.extend([c.clone(), format!("{c}_ci95_lo"), format!("{c}_ci95_hi")]);
                } else {
                    header.push(c.clone());
                }
            }
            println!("{}", header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","));
            for r in &a.rows {
                let mut out = Vec::new();
                for (i, cell) in r.iter().enumerate() {
                    let noisy = a.rows.iter().any(|r| r[i].is_object());
                    if noisy {
                        let v = cell.get("value").map(plain).unwrap_or_default();
                        let (lo, hi) = match cell.get("ci95").and_then(|c| c.as_array()) {
                            Some(ci) if ci.len() == 2 => (plain(&ci[0]), plain(&ci[1])),
                            _ => (String::new(), String::new()),
                        };
                        out.extend([v, lo, hi]);
                    } else {
                        out.push(csv_field(&plain(cell)));
                    }
                }
                println!("{}", out.join(","));
            }
            eprintln!("{}", footer(a));
        }
        _ => {
            let cells: Vec<Vec<String>> = a
                .rows
                .iter()
                .map(|r| r.iter().map(|c| if a.dry_run && c.is_null() { "·".into() } else { show_cell(c) }).collect())
                .collect();
            let widths: Vec<usize> = (0..a.columns.len())
                .map(|i| cells.iter().map(|r| r[i].chars().count()).chain([a.columns[i].chars().count()]).max().unwrap_or(0))
                .collect();
            let line = |items: Vec<String>| {
                items.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
            };
            println!("{}", line(a.columns.clone()));
            println!("{}", line(widths.iter().map(|w| "-".repeat(*w)).collect()));
            for r in cells {
                println!("{}", line(r));
            }
            println!("{}", footer(a));
            if a.rows.iter().flatten().any(|c| c.is_null()) && !a.dry_run {
                println!("(suppressed: noisy counts under the steward's small-cell threshold, or cells without a value)");
            }
        }
    }
}

fn footer(a: &Answer) -> String {
    let mut s = if a.dry_run {
        format!(
            "dry run: nothing spent, no data read. Groups: {}. Budget left: ε {:.6}, δ {:e}",
            a.groups, a.budget_remaining.epsilon, a.budget_remaining.delta
        )
    } else {
        format!(
            "ε spent {}, δ spent {:e}; budget left: ε {:.6}, δ {:e}; groups: {}; query #{}",
            a.epsilon_spent,
            a.delta_spent,
            a.budget_remaining.epsilon,
            a.budget_remaining.delta,
            a.groups,
            a.query_id.unwrap_or_default()
        )
    };
    if let Some(e) = a.epsilon_needed {
        s.push_str(&format!("\nε needed for the asked accuracy: {e:.6}"));
    }
    s
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

fn show_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "(suppressed)".into(),
        serde_json::Value::Object(o) => {
            let value = o.get("value").map(plain).unwrap_or_default();
            if let Some(h) = o.get("ci95_half_width") {
                return if h.is_null() { "± (depends on n)".into() } else { format!("± {}", plain(h)) };
            }
            match o.get("ci95").and_then(|c| c.as_array()) {
                Some(ci) if ci.len() == 2 => format!("{value} [{}, {}]", plain(&ci[0]), plain(&ci[1])),
                _ => value,
            }
        }
        other => plain(other),
    }
}

/// The demo's last step: a project and a few DP queries on the freshly ingested warehouse.
pub fn demo_queries(data_dir: &Path) -> Result<()> {
    println!("\n== 5. a steward creates a project; a researcher asks questions (answers are noisy, with 95% intervals)");
    let (wh, mut ledger) = ledger(data_dir)?;
    let p = ledger.create_project("diabetes-demo", 3.0, 1e-6, &["person".into(), "condition_occurrence".into(), "measurement".into()])?;
    println!("project {} with ε {} on {}", p.name, p.epsilon, p.tables.join(", "));
    let queries = [
        (
            "patients with type 2 diabetes (E11) by decade of birth and sex",
            "SELECT year_of_birth / 10 * 10 AS decade, gender_concept_id AS sex, COUNT(DISTINCT person_id) AS patients \
             FROM person JOIN condition_occurrence USING (person_id) \
             WHERE condition_source_value LIKE 'E11%' AND year_of_birth >= 1930 GROUP BY 1, 2 ORDER BY 1, 2",
            0.5,
        ),
        (
            "mean HbA1c (LOINC 4548-4, %), values bounded by the WHERE clause to [3, 20]",
            "SELECT AVG(value_as_number) AS mean_hba1c, COUNT(*) AS measurements FROM measurement \
             WHERE measurement_source_value = '4548-4' AND value_as_number BETWEEN 3 AND 20",
            0.5,
        ),
        (
            "median age at a type 2 diabetes diagnosis",
            "SELECT MEDIAN(EXTRACT(YEAR FROM condition_start_date) - year_of_birth) AS median_age \
             FROM person JOIN condition_occurrence USING (person_id) WHERE condition_source_value LIKE 'E11%'",
            0.5,
        ),
    ];
    let rt = runtime()?;
    for (title, sql, epsilon) in queries {
        println!("\n-- {title} (ε {epsilon})\n{sql}\n");
        let req = QueryRequest { project: p.name.clone(), sql: sql.into(), epsilon, ..Default::default() };
        match rt.block_on(dp::run(&wh, &mut ledger, &req, Noise::OpenDp)) {
            Ok(a) => print_answer(&a, "table"),
            Err(e) => println!("refused: {e}"),
        }
    }
    println!("\n-- and a query the privacy rules refuse:\nSELECT person_id, year_of_birth FROM person");
    let req = QueryRequest {
        project: p.name.clone(),
        sql: "SELECT person_id, year_of_birth FROM person".into(),
        epsilon: 0.1,
        ..Default::default()
    };
    match rt.block_on(dp::run(&wh, &mut ledger, &req, Noise::OpenDp)) {
        Ok(_) => return Err(Error::Usage("the demo's row-level query was answered: the allow-list is broken".into())),
        Err(e) => println!("{e}"),
    }
    Ok(())
}
