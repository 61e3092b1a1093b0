//! Local (steward-side) commands: projects, policy, and queries against the data directory.

use std::path::Path;

use secretum_engine::accounts::{Accounts, Role};
use secretum_engine::audit::{self, Event};
use secretum_engine::budget::{Ledger, PolicyUpdate};
use secretum_engine::dp::{self, Answer, Noise, QueryError, QueryRequest};
use secretum_engine::projects::{Approval, Transition};
use secretum_engine::{Error, Result, Warehouse};

use crate::cli::{AuditCommand, PolicyCommand, ProjectCommand, QueryArgs, UserCommand};

/// Who runs a local command, as the audit log names them.
fn local_actor() -> String {
    format!("local:{}", std::env::var("USER").unwrap_or_else(|_| "steward".into()))
}

/// A connection to the warehouse's catalog database (catalog, ledger, accounts, audit).
fn catalog_connection(data_dir: &Path) -> Result<rusqlite::Connection> {
    Ok(secretum_engine::catalog::Catalog::open(&secretum_engine::catalog::Layout::new(data_dir).catalog())?.into_connection())
}

fn record(data_dir: &Path, event: &Event<'_>) -> Result<()> {
    let mut conn = catalog_connection(data_dir)?;
    audit::append(&mut conn, event)?;
    Ok(())
}

fn print_project(p: &secretum_engine::budget::Project) {
    println!("project #{} {} ({}), created {}", p.id, p.name, p.status, p.created_at);
    if !p.title.is_empty() {
        println!("title: {}", p.title);
    }
    if let Some(o) = &p.owner {
        println!("owner: {o}; members: {}", p.members.join(", "));
    }
    if let Some(r) = &p.requested {
        println!("requested: ε {}, δ {:e}, tables {}, {} days", r.epsilon, r.delta, r.tables.join(","), p.duration_days.unwrap_or(0));
    }
    println!("tables: {}", p.tables.join(", "));
    println!("ε: {} granted, {:.6} spent, {:.6} left", p.epsilon, p.epsilon_spent, p.epsilon_remaining());
    println!("δ: {:e} granted, {:e} spent, {:e} left", p.delta, p.delta_spent, p.delta_remaining());
    if let Some(e) = &p.expires_at {
        println!("expires: {e}");
    }
    if let Some(r) = &p.reason {
        println!("reason: {r}");
    }
}

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
            let detail = format!("tables {}", p.tables.join(","));
            record(
                data_dir,
                &Event {
                    actor: &local_actor(),
                    action: "project.created",
                    project: Some(&p.name),
                    epsilon: Some(epsilon),
                    delta: Some(delta),
                    outcome: "ok",
                    detail: Some(&detail),
                    ..Default::default()
                },
            )?;
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
            let p = ledger.project_ref(&name)?.ok_or_else(|| Error::Usage(format!("project {name:?} does not exist")))?;
            print_project(&p);
            for (id, e, d, status, at) in ledger.history(&p.name)? {
                println!("  #{id:<6} {at}  ε {e:<8} δ {d:<8e} {status}");
            }
            Ok(())
        }
        ProjectCommand::Approve { project, epsilon, delta, tables, expires_at } => {
            print_project(&ledger.approve(&project, &local_actor(), &Approval { epsilon, delta, tables, expires_at })?);
            Ok(())
        }
        ProjectCommand::Reject { project, reason } => {
            print_project(&ledger.reject(&project, &local_actor(), &reason)?);
            Ok(())
        }
        ProjectCommand::Suspend { project, reason } => transition(&mut ledger, &project, Transition::Suspend, reason),
        ProjectCommand::Resume { project } => transition(&mut ledger, &project, Transition::Resume, None),
        ProjectCommand::Close { project } => transition(&mut ledger, &project, Transition::Close, None),
    }
}

fn transition(ledger: &mut Ledger, project: &str, t: Transition, reason: Option<String>) -> Result<()> {
    print_project(&ledger.transition(project, &local_actor(), t, reason.as_deref())?);
    Ok(())
}

pub fn user(data_dir: &Path, cmd: UserCommand) -> Result<()> {
    Warehouse::open(data_dir)?;
    let mut conn = catalog_connection(data_dir)?;
    let actor = local_actor();
    match cmd {
        UserCommand::Add { name, role } => {
            let role: Role = role.parse()?;
            let (user, token) = Accounts::new(&mut conn).add(&actor, &name, role)?;
            eprintln!("created {} ({}); its token, shown only this once:", user.name, user.role);
            println!("{token}");
        }
        UserCommand::List => {
            println!("{:<24} {:<11} {:<28} tokens", "user", "role", "created");
            for u in Accounts::new(&mut conn).list()? {
                let tokens: Vec<String> = u.active_tokens.iter().map(|t| format!("{}…", t.prefix)).collect();
                let tokens = if tokens.is_empty() { "(none active)".to_owned() } else { tokens.join(" ") };
                println!("{:<24} {:<11} {:<28} {tokens}", u.name, u.role, u.created_at);
            }
        }
        UserCommand::Revoke { name } => {
            let n = Accounts::new(&mut conn).revoke(&actor, &name)?;
            println!("revoked {n} token{} of {name}", if n == 1 { "" } else { "s" });
        }
        UserCommand::Rotate { name } => {
            let token = Accounts::new(&mut conn).rotate(&actor, &name)?;
            eprintln!("{name}'s old tokens are revoked; the new one, shown only this once:");
            println!("{token}");
        }
    }
    Ok(())
}

pub fn audit(data_dir: &Path, cmd: AuditCommand) -> Result<()> {
    Warehouse::open(data_dir)?;
    let conn = catalog_connection(data_dir)?;
    match cmd {
        AuditCommand::Verify => {
            let v = audit::verify(&conn)?;
            match v.broken {
                None => {
                    println!("audit log verified: {} entries, head {}", v.entries, v.head);
                    Ok(())
                }
                Some(b) => Err(Error::Usage(format!(
                    "audit log broken at entry {}: {} ({} entries verified before it)",
                    b.id, b.reason, v.entries
                ))),
            }
        }
        AuditCommand::Export { out } => {
            use std::io::Write;
            let entries = audit::entries(&conn, &audit::Filter::default())?;
            let mut w: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| Error::io(p, e))?)),
                None => Box::new(std::io::stdout().lock()),
            };
            for e in &entries {
                let line = serde_json::to_string(e).unwrap_or_default();
                writeln!(w, "{line}").map_err(|e| Error::io(out.clone().unwrap_or_default(), e))?;
            }
            w.flush().map_err(|e| Error::io(out.clone().unwrap_or_default(), e))?;
            if let Some(p) = out {
                eprintln!("wrote {} entries to {}", entries.len(), p.display());
            }
            Ok(())
        }
    }
}

pub fn policy(data_dir: &Path, cmd: PolicyCommand) -> Result<()> {
    let (_wh, mut ledger) = ledger(data_dir)?;
    let p = match cmd {
        PolicyCommand::Set { patient_epsilon_cap, patient_delta_cap, query_epsilon_cap, suppression_threshold, round_digits } => {
            let p = ledger.set_policy(&PolicyUpdate {
                patient_epsilon_cap,
                patient_delta_cap,
                query_epsilon_cap,
                suppression_threshold,
                round_digits,
            })?;
            let detail = format!(
                "patient ε cap {}, patient δ cap {:e}, query ε cap {}, suppression threshold {}, rounding {} digits",
                p.patient_epsilon_cap, p.patient_delta_cap, p.query_epsilon_cap, p.suppression_threshold, p.round_digits
            );
            record(
                data_dir,
                &Event { actor: &local_actor(), action: "policy.changed", outcome: "ok", detail: Some(&detail), ..Default::default() },
            )?;
            p
        }
        PolicyCommand::Show => ledger.policy()?,
    };
    println!("patient ε cap (all projects together): {}", p.patient_epsilon_cap);
    println!("patient δ cap (all projects together): {:e}", p.patient_delta_cap);
    println!("per-query ε cap:                       {}", p.query_epsilon_cap);
    println!("small-cell suppression threshold:      {}", p.suppression_threshold);
    println!("rounding of non-count values:          {} decimal digits", p.round_digits);
    println!("ε spent by all projects:               {:.6}", ledger.warehouse_epsilon_spent()?);
    println!("δ spent by all projects:               {:e}", ledger.warehouse_delta_spent()?);
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
        actor: local_actor(),
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
            print!("{}", crate::format::csv(a));
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

fn show_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "(suppressed)".into(),
        serde_json::Value::Object(o) => {
            let value = o.get("value").map(crate::format::plain).unwrap_or_default();
            if let Some(h) = o.get("ci95_half_width") {
                return if h.is_null() { "± (depends on n)".into() } else { format!("± {}", crate::format::plain(h)) };
            }
            match o.get("ci95").and_then(|c| c.as_array()) {
                Some(ci) if ci.len() == 2 => format!("{value} [{}, {}]", crate::format::plain(&ci[0]), crate::format::plain(&ci[1])),
                _ => value,
            }
        }
        other => crate::format::plain(other),
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
        let req = QueryRequest { actor: local_actor(), project: p.name.clone(), sql: sql.into(), epsilon, ..Default::default() };
        match rt.block_on(dp::run(&wh, &mut ledger, &req, Noise::OpenDp)) {
            Ok(a) => print_answer(&a, "table"),
            Err(e) => println!("refused: {e}"),
        }
    }
    println!("\n-- and a query the privacy rules refuse:\nSELECT person_id, year_of_birth FROM person");
    let req = QueryRequest {
        actor: local_actor(),
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
