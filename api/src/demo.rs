//! `secretum demo`: the whole job on a temporary warehouse: generate, init, ingest every table,
//! summarize, then a project and a few DP queries, and one the privacy rules refuse.

use secretum_engine::budget::Ledger;
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::governance::Governance;
use secretum_engine::{Error, Result, Warehouse, synth};

use secretum_engine::ingest::Orphans;

use crate::commands::warehouse::{IngestArgs, generate, ingest_one, print_tables};
use crate::commands::{local_actor, runtime};
use crate::output::{self, Format};

/// The demo's questions: (title, SQL, ε).
const QUERIES: [(&str, &str, f64); 4] = [
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
        "median age at a patient's first type 2 diabetes diagnosis (a per-patient relation)",
        "WITH first_dx AS (SELECT person_id, MIN(condition_start_date) AS diagnosed FROM condition_occurrence \
         WHERE condition_source_value LIKE 'E11%' GROUP BY person_id) \
         SELECT MEDIAN(EXTRACT(YEAR FROM f.diagnosed) - p.year_of_birth) AS median_age \
         FROM first_dx f JOIN person p ON p.person_id = f.person_id",
        0.5,
    ),
    (
        "patients by disorder group, every descendant code included (a roll-up through the public vocabulary)",
        "SELECT c.concept_name AS disorder_group, COUNT(DISTINCT co.person_id) AS patients \
         FROM condition_occurrence co \
         JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id \
         JOIN concept c ON c.concept_id = ca.ancestor_concept_id \
         WHERE c.concept_id IN (201820, 316866, 134057, 320136) GROUP BY 1 ORDER BY 1",
        0.5,
    ),
];

const REFUSED: &str = "SELECT person_id, year_of_birth FROM person";

pub fn run(patients: u64, seed: u64, keep: bool, cluster: bool) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("secretum-demo-").tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let root = dir.path().to_owned();
    println!("== secretum demo in {}", root.display());
    // With --cluster: Garage (when this machine has it), a scheduler and two executors on
    // loopback, stopped when the demo ends (they are dropped after the warehouse).
    let garage = match cluster {
        false => None,
        true => match crate::local::find_garage() {
            Some(bin) => {
                let g = crate::local::Garage::start(&bin)?;
                println!("\n== 0. a one-node Garage object store on {} (bucket `secretum`)", g.endpoint);
                Some(g)
            }
            None => {
                println!(
                    "\n== 0. no Garage binary on this machine (SECRETUM_GARAGE, the PATH, or `{}`): the cluster reads the Parquet files from local disk",
                    crate::local::garage_install_command()
                );
                None
            }
        },
    };
    let store = garage.as_ref().map(|g| g.config("demo"));
    let nodes = match cluster {
        false => None,
        true => {
            let exe = std::env::current_exe().map_err(|e| Error::io("the running binary", e))?;
            let c = crate::local::LocalCluster::start(&exe, store.as_ref(), 2, &root.join("cluster"))?;
            println!(
                "== 0b. a cluster on loopback: scheduler {}, executors on ports {:?} (logs in {})",
                c.url(),
                c.executor_ports,
                root.join("cluster").display()
            );
            Some(c)
        }
    };
    println!("\n== 1. generate synthetic raw extracts (with direct identifiers: NIR, names, birth dates, postcodes)");
    let raw = root.join("raw");
    generate(patients, seed, &raw, None)?;
    println!("\n== 2. init a warehouse (catalog, OMOP table policies, new pseudonymization key)");
    let data = root.join("data");
    let key_file = root.join("steward.key");
    let report = Warehouse::init_on(&data, Some(&key_file), None, store.as_ref())?;
    println!("warehouse {}, key {}", report.data_dir.display(), report.key_file.display());
    println!("\n== 3. ingest every table: validate, pseudonymize, generalize, write Parquet, commit");
    let mut wh = Warehouse::open(&data)?;
    println!("Parquet files: {}", wh.store.describe(&data));
    let key = wh.key(None)?;
    let args = IngestArgs { format: None, cdm_version: None, orphans: Orphans::Reject, allow_duplicate: false };
    for table in synth::TABLES {
        let file = raw.join(format!("{table}.csv"));
        ingest_one(&mut wh, &key, table, &file, &args)?;
    }
    println!("\n== 3b. load the vocabulary the codes come from (public reference data: concept, concept_ancestor, ...)");
    let loaded = secretum_engine::vocabulary::load(&mut wh, &raw.join("vocabulary"), &local_actor(), None)?;
    for (table, rows, _) in &loaded.tables {
        println!("  {table:<22} {rows:>8} rows (public)");
    }
    println!("\n== 4. what is stored");
    print_tables(&wh)?;
    let person = wh.schemas.get("person")?;
    let stored: Vec<&str> = person.stored_columns().map(|c| c.name.as_str()).collect();
    let dropped: Vec<&str> = person.columns.iter().filter(|c| !c.is_stored()).map(|c| c.name.as_str()).collect();
    println!("\nperson keeps {}; never stored: {}", stored.join(", "), dropped.join(", "));

    println!("\n== 5. a steward creates a project; a researcher asks questions (answers are noisy, with 95% intervals)");
    let tables: Vec<String> = ["person", "condition_occurrence", "measurement"].map(String::from).to_vec();
    let known: Vec<String> = wh.schemas.tables.keys().cloned().collect();
    let p = Governance::open(&data)?.create_project(&local_actor(), "diabetes-demo", 3.0, 1e-6, &tables, &known)?;
    println!("project {} with ε {} on {}", p.name, p.epsilon, p.tables.join(", "));
    let mut ledger = Ledger::open(&data)?;
    if let Some(c) = &nodes {
        wh.cluster = Some(c.cluster()?);
        println!("queries execute on the cluster {} (analysis, the ledger, noise and audit stay here)", c.url());
    }
    let rt = runtime()?;
    let ask = |sql: &str, epsilon: f64| QueryRequest {
        actor: local_actor(),
        project: p.name.clone(),
        sql: sql.into(),
        epsilon,
        ..Default::default()
    };
    for (title, sql, epsilon) in QUERIES {
        println!("\n-- {title} (ε {epsilon})\n{sql}\n");
        match rt.block_on(dp::run(&wh, &mut ledger, &ask(sql, epsilon), Noise::OpenDp)) {
            Ok(a) => output::print(&a, Format::Table),
            Err(e) => println!("refused: {e}"),
        }
    }
    println!("\n-- and a query the privacy rules refuse:\n{REFUSED}");
    match rt.block_on(dp::run(&wh, &mut ledger, &ask(REFUSED, 0.1), Noise::OpenDp)) {
        Ok(_) => return Err(Error::internal("the demo's row-level query was answered: the allow-list is broken")),
        Err(e) => println!("{e}"),
    }
    if let Some(c) = nodes {
        println!("\n== stopping the cluster's scheduler and executors{}", if garage.is_some() { " and Garage" } else { "" });
        drop(c);
    }
    drop(garage);
    if keep {
        let kept = dir.keep();
        println!("\nkept {}", kept.display());
    }
    Ok(())
}
