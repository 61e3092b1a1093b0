//! The Python client's tests and every researcher notebook, executed headlessly against a live
//! server on loopback with a fresh synthetic warehouse. Notebooks run in a fresh kernel each,
//! through nbclient (`notebooks/run_notebooks.py`); pytest runs the client's own tests.
//!
//! Python comes from the machine (`python3` with `venv` and `pip`); the packages come from the
//! package registry into a virtual environment kept between runs, like cargo's target directory
//! (`SECRETUM_VENV`, default `~/.cache/secretum-venv-<hash of the requirements>`). With
//! `SECRETUM_BLESS=1` the executed notebooks, outputs and plots included, replace the copies in
//! `notebooks/`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::common::{Fixture, secretum, stderr};
use crate::service::{Server, call, user};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{what} failed:\n{out}");
    out
}

/// A virtual environment with the client and the notebook dependencies.
pub(crate) fn venv() -> PathBuf {
    // Tests run as threads of one process, and more than one needs the environment: one at a
    // time creates it or reinstalls the client.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let python = std::env::var("SECRETUM_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python).args(["-c", "import venv, ensurepip"]).output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "the notebook tests need Python 3 with venv and pip: install them (Debian: `apt-get install python3 python3-venv python3-pip`) \
             or point SECRETUM_PYTHON at a python3 that has them"
        ),
    }
    let requirements = std::fs::read(repo().join("notebooks/requirements.txt")).expect("requirements");
    let client_project = std::fs::read(repo().join("notebooks/client/pyproject.toml")).expect("pyproject");
    let hash = hex::encode(&Sha256::digest([requirements, client_project].concat())[..6]);
    let dir = match std::env::var_os("SECRETUM_VENV") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(format!(".cache/secretum-venv-{hash}")),
    };
    let py = dir.join("bin/python");
    let ready = dir.join(".ready");
    if !ready.exists() {
        eprintln!("creating the notebook environment in {} (packages from the registry, once)", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new(&python).args(["-m", "venv"]).arg(&dir), "python3 -m venv");
        run(Command::new(&py).args(["-m", "pip", "install", "-q", "--upgrade", "pip"]), "pip upgrade");
        run(
            Command::new(&py)
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(repo().join("notebooks/requirements.txt"))
                .arg(repo().join("notebooks/client")),
            "pip install (notebook requirements and the client)",
        );
        std::fs::write(&ready, b"").expect("mark the environment ready");
    }
    // The client's code changes more often than its dependencies: reinstall it every run.
    run(
        Command::new(&py).args(["-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]).arg(repo().join("notebooks/client")),
        "pip install the client",
    );
    py
}

/// Approve every pending project with the steward's CLI, as the notebooks ask, until stopped.
fn approver(data: PathBuf, url: String, steward: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut approved = 0;
        while !stop.load(Ordering::Relaxed) {
            let pending = call("GET", &format!("{url}/v1/projects?status=pending"), Some(&steward), None, None).json();
            for p in pending.as_array().into_iter().flatten() {
                let id = p["id"].as_i64().expect("id").to_string();
                let o = secretum(&["--data-dir", data.to_str().unwrap(), "project", "approve", &id]);
                if o.status.success() {
                    approved += 1;
                } else {
                    // Only a project decided meanwhile may fail to approve; anything else is a bug.
                    assert!(stderr(&o).contains("only pending requests"), "secretum project approve {id}: {}", stderr(&o));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        approved
    })
}

#[test]
fn the_client_and_every_notebook_run_against_a_live_server() {
    let py = venv();
    // Large enough for the cohort study's survival histogram to have cells over the small-cell
    // threshold.
    let fx = Fixture::new(20_000, 11);
    // Every synthetic table: the cohort study follows patients to death or the end of observation.
    for t in secretum_engine::synth::TABLES {
        let o = secretum(&["--data-dir", fx.data.to_str().unwrap(), "ingest", "--table", t, "--file", fx.raw(t).to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let steward = user(&fx.data, "sue", "steward");
    let alice = user(&fx.data, "alice", "researcher");
    let s = Server::start(&fx.data, &[]);
    let env = |c: &mut Command| {
        c.env("SECRETUM_URL", &s.url).env("SECRETUM_TOKEN", &alice).env("SECRETUM_STEWARD_TOKEN", &steward).env("MPLBACKEND", "Agg");
    };

    // The client's tests compare its helpers with exact answers cell by cell: no small-cell
    // suppression for them; the notebooks run under the default policy again.
    let policy = |threshold: &str| {
        let o = secretum(&["--data-dir", fx.data.to_str().unwrap(), "policy", "set", "--suppression-threshold", threshold]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    // Every notebook and test spends on the same warehouse: the warehouse-wide cap covers them all.
    let o = secretum(&["--data-dir", fx.data.to_str().unwrap(), "policy", "set", "--patient-epsilon-cap", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    policy("0");
    let mut pytest = Command::new(&py);
    pytest.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).arg(repo().join("notebooks/client/tests"));
    // The client's cohort tests compare with the exact answer read from the served warehouse.
    pytest.env("SECRETUM_TEST_DATA", &fx.data);
    env(&mut pytest);
    let out = run(&mut pytest, "the client's pytest suite");
    println!("{out}");

    policy("10");
    // The client's tests approve their own requests; from here on the steward's CLI does.
    let stop = Arc::new(AtomicBool::new(false));
    let approvals = approver(fx.data.clone(), s.url.clone(), steward.clone(), stop.clone());
    let out_dir = fx.path("executed");
    let notebooks: Vec<PathBuf> = ["01_getting_started", "02_diabetes_cohort", "03_privacy_in_practice", "04_cohort_study"]
        .iter()
        .map(|n| repo().join(format!("notebooks/{n}.ipynb")))
        .collect();
    let mut exec = Command::new(&py);
    exec.arg(repo().join("notebooks/run_notebooks.py")).arg("--out").arg(&out_dir).args(&notebooks);
    env(&mut exec);
    exec.env_remove("MPLBACKEND");
    let result = exec.output().expect("run the notebooks");
    let log = format!("{}{}", String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    stop.store(true, Ordering::Relaxed);
    let approved = approvals.join().expect("approver");
    assert!(result.status.success(), "a notebook failed:\n{log}");
    println!("{log}");
    assert!(approved >= notebooks.len(), "each notebook requests a project that the steward approves ({approved} approvals)");

    for nb in &notebooks {
        let executed = out_dir.join(nb.file_name().unwrap());
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&executed).unwrap()).unwrap();
        let cells = doc["cells"].as_array().unwrap();
        let code: Vec<&serde_json::Value> = cells.iter().filter(|c| c["cell_type"] == "code").collect();
        assert!(code.iter().all(|c| c["execution_count"].is_number()), "{}: every code cell ran", executed.display());
        let errors = code.iter().flat_map(|c| c["outputs"].as_array().unwrap()).filter(|o| o["output_type"] == "error").count();
        assert_eq!(errors, 0, "{}", executed.display());
        let text = String::from_utf8_lossy(&std::fs::read(&executed).unwrap()).to_string();
        assert!(!text.contains(&alice) && !text.contains(&steward), "no token is saved in a notebook");
        if nb.file_name().unwrap() != "01_getting_started.ipynb" {
            assert!(text.contains("image/png"), "{}: plots are embedded", executed.display());
        }
        if std::env::var_os("SECRETUM_BLESS").is_some() {
            std::fs::copy(&executed, nb).expect("bless notebook");
        }
    }
}
