//! Shared fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use secretum_engine::Warehouse;
use secretum_engine::pseudonym::Key;

pub const BIN: &str = env!("CARGO_BIN_EXE_secretum");

/// Run the binary; returns its output.
pub fn secretum(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("SECRETUM_DATA_DIR").output().expect("run secretum")
}

/// Run `secretum query` at ε 0.5 on `project`, kill it (SIGKILL) after `delay_ms`, and say
/// whether it had released its answer by then.
pub fn query_killed_after(data: &str, project: &str, sql: &str, delay_ms: u64) -> bool {
    let mut child = Command::new(BIN)
        .args(["query", "--data-dir", data, "--project", project, "--epsilon", "0.5", "--format", "json", sql])
        .env_remove("SECRETUM_DATA_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run secretum");
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait for secretum");
    String::from_utf8_lossy(&out.stdout).contains("\"rows\"")
}

/// The runtime an in-process query runs on.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A new warehouse and raw extracts of `patients` synthetic patients.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub raw: PathBuf,
    pub data: PathBuf,
    pub key_file: PathBuf,
}

impl Fixture {
    pub fn new(patients: u64, seed: u64) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("raw");
        let data = dir.path().join("data");
        let key_file = dir.path().join("steward.key");
        secretum_engine::synth::generate(patients, seed, &raw, None).expect("generate");
        Warehouse::init(&data, Some(&key_file), None).expect("init");
        Fixture { dir, raw, data, key_file }
    }

    pub fn raw(&self, table: &str) -> PathBuf {
        self.raw.join(format!("{table}.csv"))
    }

    pub fn open(&self) -> Warehouse {
        Warehouse::open(&self.data).expect("open warehouse")
    }

    pub fn key(&self) -> Key {
        Key::load(&self.key_file).expect("key")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect()
}

/// Read a stored table (all its committed files) into record batches.
pub fn read_table(wh: &Warehouse, table: &str) -> Vec<arrow::record_batch::RecordBatch> {
    let mut out = Vec::new();
    for f in wh.catalog.files(table).expect("files") {
        let file = std::fs::File::open(wh.layout.root.join(&f.path)).expect("open parquet");
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
        out.extend(reader.map(|b| b.expect("batch")));
    }
    out
}

/// Read a CSV file into header + records.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).expect("csv");
    let header = r.headers().expect("header").iter().map(str::to_owned).collect();
    let rows = r.records().map(|r| r.expect("record").iter().map(str::to_owned).collect()).collect();
    (header, rows)
}

/// A table's `max_rows_per_unit` in the bundled schemas (what a test's stated sensitivity is made of).
pub fn max_rows(table: &str) -> f64 {
    secretum_engine::schema::Schemas::bundled().expect("bundled schemas").tables[table].max_rows_per_unit as f64
}

/// Kolmogorov-Smirnov distance between a sample and a continuous distribution (its CDF).
pub fn ks_distance(mut z: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
    z.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = z.len() as f64;
    z.iter().enumerate().map(|(i, x)| (cdf(*x) - i as f64 / n).abs().max(((i + 1) as f64 / n - cdf(*x)).abs())).fold(0.0, f64::max)
}

/// Noisy releases drawn in the noise tests.
pub const RELEASES: usize = 4000;

/// [`RELEASES`] releases of exact component values through a prepared ungrouped query: the first
/// aggregate's errors against `truth` in units of `scale`, and how often its 95% interval held
/// `truth`.
pub fn releases(p: &secretum_engine::dp::Prepared, exact: &[f64], truth: f64, scale: f64) -> (Vec<f64>, f64) {
    let (mut z, mut covered) = (Vec::with_capacity(RELEASES), 0);
    for _ in 0..RELEASES {
        let cells = p.release_exact_components(exact, secretum_engine::dp::Noise::OpenDp).unwrap();
        let (v, ci) = cells[0];
        let (v, (lo, hi)) = (v.unwrap(), ci.unwrap());
        z.push((v - truth) / scale);
        covered += usize::from(lo <= truth && truth <= hi);
    }
    (z, covered as f64 / RELEASES as f64)
}

/// The `garage` binary: the machine's (`SECRETUM_GARAGE`, a Garage 2.x on the PATH), else one
/// built once per machine into the user's cache (`cargo install garage`: 15 to 25 minutes on two
/// cores the first time, nothing after). One test builds it; the others wait for its lock.
pub fn garage_binary() -> PathBuf {
    use secretum_api::local::{GARAGE_VERSION, find_garage, garage_cache_root};
    use std::time::{Duration, Instant};
    if let Some(bin) = find_garage() {
        return bin;
    }
    let root = garage_cache_root();
    let bin = root.join("bin/garage");
    let cache = root.parent().unwrap().to_owned();
    std::fs::create_dir_all(&cache).unwrap();
    let lock = cache.join(format!("secretum-garage-{GARAGE_VERSION}.lock"));
    loop {
        match std::fs::File::create_new(&lock) {
            Ok(_) => break,
            Err(_) if bin.exists() => return bin,
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
    if !bin.exists() {
        let started = Instant::now();
        eprintln!("building Garage {GARAGE_VERSION} into {} (once per machine; 15 to 25 minutes on two cores)", root.display());
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "garage",
                "--version",
                GARAGE_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "sqlite,bundled-libs",
            ])
            .arg("--root")
            .arg(&root)
            .env("CARGO_TARGET_DIR", cache.join("secretum-garage-build"))
            .status()
            .expect("run cargo install garage");
        let _ = std::fs::remove_file(&lock);
        assert!(status.success(), "cargo install garage failed");
        eprintln!("built Garage in {:.0} s", started.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(cache.join("secretum-garage-build"));
    } else {
        let _ = std::fs::remove_file(&lock);
    }
    bin
}
