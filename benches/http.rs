//! Load on the HTTP service: 16 concurrent clients sending DP count queries over loopback HTTP
//! to the real server (axum, auth, rate limiting off, audit, ledger), against the same queries
//! run on the engine in-process by 16 threads under the server's admission limit, in the same
//! run. Prints requests/s, p50 and p99
//! latency for both and the HTTP overhead ratio.
//!
//! `cargo bench --bench http` (SECRETUM_BENCH_PATIENTS=1000000 and SECRETUM_BENCH_REQUESTS=320
//! by default; under `cargo test` it runs a small smoke size).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use secretum_api::server::{AppState, Config};
use secretum_engine::Warehouse;
use secretum_engine::budget::Ledger;
use secretum_engine::catalog::Catalog;
use secretum_engine::dp::{self, Noise, QueryRequest};
use secretum_engine::governance::accounts::{Accounts, Role};
use secretum_engine::governance::{Governance, PolicyUpdate};

mod common;

const CLIENTS: usize = 16;
const QUERIES: &[&str] = &["SELECT COUNT(*) FROM person", "SELECT gender_concept_id, COUNT(*) FROM person GROUP BY 1"];

fn build(dir: &Path, patients: usize) -> std::path::PathBuf {
    let data = dir.join("wh");
    Warehouse::init(&data, Some(&dir.join("key")), None).expect("init");
    let mut wh = Warehouse::open(&data).expect("open");
    // Every other column of the CDM's person table (source concepts, locations...) is NULL here:
    // the bench groups by gender only.
    common::write_table(&mut wh, "person", patients, common::person_column);
    let mut g = Governance::open(&data).expect("governance");
    g.set_policy("bench", &PolicyUpdate { patient_epsilon_cap: Some(1e12), ..Default::default() }).expect("policy");
    let tables = ["person".to_string()];
    g.create_project("bench", "bench", 1e12, 0.0, &tables, &tables).expect("project");
    data
}

/// ε 0.1, different in the ninth decimal at every request: each request is a new question (the same
/// question again would be answered from its stored release, a replay, not a DP execution).
fn fresh_epsilon() -> f64 {
    static ASKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    0.1 + ASKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9
}

struct Stats {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn stats(mut latencies: Vec<Duration>, wall: Duration) -> Stats {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    Stats { per_sec: latencies.len() as f64 / wall.as_secs_f64(), p50: at(0.50), p99: at(0.99) }
}

/// `CLIENTS` threads, each running `per_client` requests through `one`; latencies and wall time.
fn load(per_client: usize, one: impl Fn(usize, usize) + Sync) -> Stats {
    let started = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|s| {
        let one = &one;
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn(move || {
                    (0..per_client)
                        .map(|i| {
                            let t = Instant::now();
                            one(c, i);
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("client")).collect()
    });
    stats(latencies, started.elapsed())
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let patients = env("SECRETUM_BENCH_PATIENTS", if benching { 1_000_000 } else { 2_000 });
    let requests = env("SECRETUM_BENCH_REQUESTS", if benching { 320 } else { 32 });
    let per_client = (requests / CLIENTS).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let data = build(dir.path(), patients);
    eprintln!("warehouse of {patients} patients in {:.1}s", t.elapsed().as_secs_f64());
    let token = {
        let mut conn = Catalog::open(&data.join("catalog.sqlite")).expect("catalog").into_connection();
        Accounts::new(&mut conn).add("bench", "bench", Role::Researcher).expect("user").1
    };
    // Make the bench account a member of the project (it was created locally, with no owner).
    Catalog::open(&data.join("catalog.sqlite"))
        .expect("catalog")
        .connection()
        .execute("INSERT INTO project_members (project_id, user_name) SELECT id, 'bench' FROM projects WHERE name = 'bench'", [])
        .expect("member");

    // The server, in this process, on a loopback port.
    let config = Config { data_dir: data.clone(), rate_limit: 0.0, listen: "127.0.0.1:0".parse().expect("addr"), ..Config::default() };
    let state = AppState::new(config).expect("state");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, secretum_api::server::app(state)).await });
    let url = format!("http://{addr}/v1/projects/bench/queries");
    let agents: Vec<ureq::Agent> = (0..CLIENTS).map(|_| ureq::Agent::new_with_defaults()).collect();

    let http = |c: usize, i: usize| {
        let body = serde_json::json!({"sql": QUERIES[i % QUERIES.len()], "epsilon": fresh_epsilon()});
        let mut resp = agents[c].post(&url).header("Authorization", &format!("Bearer {token}")).send_json(&body).expect("request");
        let v: serde_json::Value = resp.body_mut().read_json().expect("answer");
        assert!(v["query_id"].is_i64(), "{v}");
    };
    // One warehouse handle and ledger connection per client thread, as the server keeps its
    // schemas loaded (a connection per request there, but no schema parsing).
    let handles: Vec<std::sync::Mutex<(Warehouse, Ledger)>> = (0..CLIENTS)
        .map(|_| std::sync::Mutex::new((Warehouse::open(&data).expect("open"), Ledger::open(&data).expect("ledger"))))
        .collect();
    // The server runs at most `max_queries` queries at once and queues the rest; the in-process
    // side gets the same admission limit, so that the ratio is the cost of HTTP, JSON, auth and
    // audit rather than a difference in how many queries share the cores.
    let admitted = std::sync::Arc::new(tokio::sync::Semaphore::new(Config::default().max_queries));
    let engine = |c: usize, i: usize| {
        let _permit = rt.block_on(admitted.clone().acquire_owned()).expect("permit");
        let mut guard = handles[c].lock().expect("lock");
        let (wh, ledger) = &mut *guard;
        let req = QueryRequest {
            actor: "bench".into(),
            project: "bench".into(),
            sql: QUERIES[i % QUERIES.len()].into(),
            epsilon: fresh_epsilon(),
            ..Default::default()
        };
        rt.block_on(dp::run(wh, ledger, &req, Noise::OpenDp)).expect("dp");
    };
    // Warm both paths (page cache, lazy statics), then measure them back to back.
    load(1, http);
    load(1, engine);
    let over_http = load(per_client, http);
    let in_process = load(per_client, engine);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\n{CLIENTS} concurrent clients, {} DP count queries each way, {patients} patients:", per_client * CLIENTS);
    for (name, s) in [("HTTP", &over_http), ("in-process", &in_process)] {
        println!("  {name:<11} {:>8.1} requests/s   p50 {:>8.2} ms   p99 {:>8.2} ms", s.per_sec, ms(s.p50), ms(s.p99));
    }
    println!(
        "  HTTP overhead: throughput ratio {:.3} (in-process / HTTP), p50 ratio {:.3} (HTTP / in-process), p50 difference {:.2} ms",
        in_process.per_sec / over_http.per_sec,
        ms(over_http.p50) / ms(in_process.p50),
        ms(over_http.p50) - ms(in_process.p50)
    );
}
