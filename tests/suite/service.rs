//! The governed service end to end: the real binary serving on a loopback port, real SQLite,
//! real Parquet, driven over HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{BIN, Fixture, secretum, stderr, stdout};

/// A running `secretum serve`; killed (SIGKILL) when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn start(data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env_remove("SECRETUM_DATA_DIR")
            .env("SECRETUM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.expect("server stderr");
            if let Some(rest) = line.strip_prefix("secretum serving ") {
                url = Some(rest.split_whitespace().next().expect("url").to_owned());
                break;
            }
        }
        let url = url.expect("the server printed its address");
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

/// An HTTP answer: status, content type, body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    content_type: String,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_owned()
    }
}

pub(crate) fn call(method: &str, url: &str, token: Option<&str>, body: Option<&Value>, accept: Option<&str>) -> Reply {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match method {
        "GET" => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            if let Some(acc) = accept {
                r = r.header("Accept", acc);
            }
            r.call()
        }
        _ => {
            let mut r = a.post(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            if let Some(acc) = accept {
                r = r.header("Accept", acc);
            }
            match body {
                Some(b) => r.send_json(b),
                None => r.send_empty(),
            }
        }
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = resp.body_mut().with_config().limit(64 << 20).read_to_vec().expect("body");
    Reply { status, content_type, body }
}

fn get(s: &Server, path: &str, token: &str) -> Reply {
    call("GET", &format!("{}{path}", s.url), Some(token), None, None)
}

pub(crate) fn post(s: &Server, path: &str, token: &str, body: Value) -> Reply {
    call("POST", &format!("{}{path}", s.url), Some(token), Some(&body), None)
}

/// Create an account with the CLI; returns its token.
pub(crate) fn user(data: &Path, name: &str, role: &str) -> String {
    let o = secretum(&["--data-dir", data.to_str().unwrap(), "user", "add", "--name", name, "--role", role]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_owned()
}

/// A small warehouse with person, condition_occurrence and measurement ingested.
pub(crate) fn warehouse(patients: u64) -> Fixture {
    let fx = Fixture::new(patients, 11);
    for t in ["person", "condition_occurrence", "measurement"] {
        let o = secretum(&["--data-dir", fx.data.to_str().unwrap(), "ingest", "--table", t, "--file", fx.raw(t).to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    fx
}

/// Lift the warehouse-wide per-patient cap (default ε 10) for tests that spend in a loop.
pub(crate) fn generous_policy(data: &Path) {
    let o = secretum(&["--data-dir", data.to_str().unwrap(), "policy", "set", "--patient-epsilon-cap", "1000000"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

pub(crate) struct Tokens {
    admin: String,
    pub(crate) steward: String,
    pub(crate) alice: String,
    bob: String,
    carol: String,
}

pub(crate) fn accounts(data: &Path) -> Tokens {
    Tokens {
        admin: user(data, "root", "admin"),
        steward: user(data, "sue", "steward"),
        alice: user(data, "alice", "researcher"),
        bob: user(data, "bob", "researcher"),
        carol: user(data, "carol", "researcher"),
    }
}

fn request_body(epsilon: f64) -> Value {
    json!({
        "title": "Type 2 diabetes by decade",
        "purpose": "Protocol 2026-14: prevalence of type 2 diabetes by decade of birth and sex",
        "tables": ["person", "condition_occurrence", "measurement"],
        "epsilon": epsilon,
        "delta": 1e-6,
        "duration_days": 30,
        "members": ["bob"]
    })
}

/// Request as alice and approve as the steward; returns the project id.
pub(crate) fn approved_project(s: &Server, t: &Tokens, epsilon: f64) -> i64 {
    let r = post(s, "/v1/projects", &t.alice, request_body(epsilon));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_i64().unwrap();
    let r = post(s, &format!("/v1/projects/{id}/approve"), &t.steward, json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    id
}

const COUNT: &str = "SELECT gender_concept_id, COUNT(*) AS n FROM person GROUP BY 1";

#[test]
fn the_whole_lifecycle_over_http() {
    let fx = warehouse(400);
    let t = accounts(&fx.data);
    let s = Server::start(&fx.data, &[]);

    // Health needs no token; the catalog shows policy, never rows or counts.
    assert_eq!(call("GET", &format!("{}/health", s.url), None, None, None).status, 200);
    let tables = get(&s, "/v1/tables", &t.alice).json();
    let person = tables.as_array().unwrap().iter().find(|t| t["name"] == "person").expect("person");
    assert!(person["max_rows_per_unit"].as_u64().is_some());
    let yob = person["columns"].as_array().unwrap().iter().find(|c| c["name"] == "year_of_birth").unwrap();
    assert!(yob["bounds"].is_array() && yob["privacy_role"].is_string());
    let text = String::from_utf8_lossy(&get(&s, "/v1/tables", &t.alice).body).to_string();
    assert!(!text.contains("\"rows\"") && !text.contains("row_count"), "the catalog must not carry row counts");

    // Request, list pending, approve with less than asked.
    let r = post(&s, "/v1/projects", &t.alice, request_body(3.0));
    assert_eq!(r.status, 201);
    let p = r.json();
    let id = p["id"].as_i64().unwrap();
    assert_eq!(p["status"], "pending");
    let pending = get(&s, "/v1/projects?status=pending", &t.steward).json();
    assert_eq!(pending.as_array().unwrap().len(), 1);
    let r = post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": COUNT, "epsilon": 0.1}));
    assert_eq!((r.status, r.code().as_str()), (409, "project_not_active"), "a pending project cannot spend");
    let grant = json!({"epsilon": 1.0, "tables": ["person", "condition_occurrence"]});
    let r = post(&s, &format!("/v1/projects/{id}/approve"), &t.steward, grant);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!((r.json()["status"].as_str(), r.json()["epsilon"].as_f64()), (Some("active"), Some(1.0)));

    // Queries: JSON, CSV, Arrow; a dry run spends nothing; members see the budget.
    let q = format!("/v1/projects/{id}/queries");
    let dry = post(&s, &q, &t.alice, json!({"sql": COUNT, "epsilon": 0.2, "dry_run": true}));
    assert_eq!(dry.status, 200);
    assert_eq!(dry.json()["epsilon_spent"], 0.0);
    let a = post(&s, &q, &t.alice, json!({"sql": COUNT, "epsilon": 0.2}));
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = a.json();
    assert_eq!(a["columns"], json!(["gender_concept_id", "n"]));
    // Keys 0 (unknown), 8507, 8532: the first is empty and suppressed, the others are released.
    assert!(a["rows"][1][1]["ci95"].is_array(), "{a}");
    assert!((a["budget_remaining"]["epsilon"].as_f64().unwrap() - 0.8).abs() < 1e-9);
    assert!(a["query_id"].as_i64().is_some());
    // The same question at the same ε, by another member: the stored release, for free.
    let again = post(&s, &q, &t.bob, json!({"sql": COUNT, "epsilon": 0.2})).json();
    assert_eq!((again["replay_of"].as_i64(), again["epsilon_spent"].as_f64()), (a["query_id"].as_i64(), Some(0.0)), "{again}");
    assert_eq!(again["rows"], a["rows"]);
    let csv = call("POST", &format!("{}{q}", s.url), Some(&t.bob), Some(&json!({"sql": COUNT, "epsilon": 0.25})), Some("text/csv"));
    assert_eq!(csv.status, 200);
    assert!(csv.content_type.starts_with("text/csv"));
    assert!(String::from_utf8_lossy(&csv.body).starts_with("gender_concept_id,n,n_ci95_lo,n_ci95_hi\n"));
    let arrow = call(
        "POST",
        &format!("{}{q}", s.url),
        Some(&t.alice),
        Some(&json!({"sql": COUNT, "epsilon": 0.15})),
        Some("application/vnd.apache.arrow.stream"),
    );
    assert_eq!(arrow.status, 200);
    let mut reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow.body), None).expect("arrow stream");
    let batch = reader.next().expect("a batch").expect("valid batch");
    assert_eq!(batch.num_columns(), 4);
    assert!(batch.schema().metadata().contains_key("budget_remaining_epsilon"));
    let p = get(&s, &format!("/v1/projects/{id}"), &t.bob).json();
    assert!((p["epsilon_spent"].as_f64().unwrap() - 0.6).abs() < 1e-9, "{p}");
    let history = get(&s, &format!("/v1/projects/{id}/queries"), &t.alice).json();
    assert_eq!(history.as_array().unwrap().len(), 3);

    // A table granted away is refused; so is a row-level query; budget exhaustion is 409.
    let r = post(&s, &q, &t.alice, json!({"sql": "SELECT COUNT(*) FROM measurement", "epsilon": 0.1}));
    assert_eq!((r.status, r.code().as_str()), (422, "sql_refused"));
    let r = post(&s, &q, &t.alice, json!({"sql": "SELECT person_id FROM person", "epsilon": 0.1}));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["rule"], "aggregate-required");
    let r = post(&s, &q, &t.alice, json!({"sql": COUNT, "epsilon": 0.5}));
    assert_eq!((r.status, r.code().as_str()), (409, "budget_exhausted"));

    // Suspension stops queries at once; resume; close.
    assert_eq!(post(&s, &format!("/v1/projects/{id}/suspend"), &t.steward, json!({"reason": "ethics review"})).status, 200);
    let r = post(&s, &q, &t.alice, json!({"sql": COUNT, "epsilon": 0.1}));
    assert_eq!((r.status, r.code().as_str()), (409, "project_not_active"));
    assert_eq!(post(&s, &format!("/v1/projects/{id}/resume"), &t.steward, json!({})).status, 200);
    assert_eq!(post(&s, &q, &t.alice, json!({"sql": COUNT, "epsilon": 0.1})).status, 200);
    assert_eq!(call("POST", &format!("{}/v1/projects/{id}/close", s.url), Some(&t.steward), None, None).status, 200);
    assert_eq!(post(&s, &q, &t.alice, json!({"sql": COUNT, "epsilon": 0.1})).status, 409);

    // Expiry: a project approved until a few seconds from now stops answering after that.
    let r = post(&s, "/v1/projects", &t.alice, request_body(1.0));
    let id2 = r.json()["id"].as_i64().unwrap();
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    let r = post(&s, &format!("/v1/projects/{id2}/approve"), &t.steward, json!({"expires_at": expires}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let q2 = format!("/v1/projects/{id2}/queries");
    assert_eq!(post(&s, &q2, &t.alice, json!({"sql": COUNT, "epsilon": 0.1})).status, 200);
    std::thread::sleep(Duration::from_millis(5500));
    let r = post(&s, &q2, &t.alice, json!({"sql": COUNT, "epsilon": 0.1}));
    assert_eq!((r.status, r.code().as_str()), (409, "project_not_active"));
    assert_eq!(get(&s, &format!("/v1/projects/{id2}"), &t.alice).json()["status"], "expired");

    // Rejection with a reason.
    let r = post(
        &s,
        "/v1/projects",
        &t.carol,
        json!({"title": "x", "purpose": "y", "tables": ["person"], "epsilon": 1, "delta": 0, "duration_days": 1}),
    );
    let id3 = r.json()["id"].as_i64().unwrap();
    let r = post(&s, &format!("/v1/projects/{id3}/reject"), &t.steward, json!({"reason": "no protocol attached"}));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("rejected")));

    // The audit log has every step, filterable and paginated, and its chain holds.
    let page = get(&s, &format!("/v1/audit?project={}&limit=2", p["name"].as_str().unwrap()), &t.steward).json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_i64().expect("more pages");
    let next = get(&s, &format!("/v1/audit?project={}&after={after}&limit=1000", p["name"].as_str().unwrap()), &t.steward).json();
    let actions: Vec<String> = next["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    for want in ["project.approved", "query.answered", "query.refused", "project.suspended", "project.active", "project.closed"] {
        assert!(actions.iter().any(|a| a == want), "{want} missing from {actions:?}");
    }
    let all = get(&s, "/v1/audit?limit=1000", &t.steward).json();
    let answered = all["entries"].as_array().unwrap().iter().find(|e| e["action"] == "query.answered").unwrap();
    assert_eq!(answered["sql"], COUNT);
    assert_eq!(answered["result_digest"].as_str().map(str::len), Some(64));
    assert!(all["entries"].as_array().unwrap().iter().any(|e| e["action"] == "ingest.committed"));
    assert!(all["entries"].as_array().unwrap().iter().any(|e| e["action"] == "project.rejected" && e["detail"] == "no protocol attached"));
    assert_eq!(get(&s, "/v1/audit/verify", &t.steward).json()["broken"], Value::Null);
    let o = secretum(&["--data-dir", fx.data.to_str().unwrap(), "audit", "verify"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // One edited row in SQLite breaks the chain, and verification names it.
    let conn = rusqlite::Connection::open(fx.data.join("catalog.sqlite")).unwrap();
    let victim: i64 = conn.query_row("SELECT id FROM audit WHERE action = 'query.answered' ORDER BY id LIMIT 1", [], |r| r.get(0)).unwrap();
    conn.execute("UPDATE audit SET epsilon = 0.0001 WHERE id = ?1", [victim]).unwrap();
    drop(conn);
    let o = secretum(&["--data-dir", fx.data.to_str().unwrap(), "audit", "verify"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("broken at entry {victim}")), "{}", stderr(&o));
    assert_eq!(get(&s, "/v1/audit/verify", &t.steward).json()["broken"]["id"], victim);

    // The export is JSON lines.
    let o = secretum(&["--data-dir", fx.data.to_str().unwrap(), "audit", "export"]);
    assert!(stdout(&o).lines().all(|l| serde_json::from_str::<Value>(l).is_ok()));
}

#[test]
fn every_status_code_on_purpose() {
    let fx = warehouse(100);
    let t = accounts(&fx.data);
    let s = Server::start(&fx.data, &["--body-limit", "4096"]);
    let id = approved_project(&s, &t, 1.0);
    let q = format!("{}/v1/projects/{id}/queries", s.url);

    // 400: malformed JSON, unknown fields, bad values.
    let r = agent()
        .post(&q)
        .header("Authorization", &format!("Bearer {}", t.alice))
        .header("Content-Type", "application/json")
        .send("{\"sql\": ")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": COUNT, "epsilon": 0.1, "sneaky": 1}));
    assert_eq!((r.status, r.code().as_str()), (400, "malformed"));
    let r = post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": COUNT}));
    assert_eq!(r.status, 400, "epsilon is required");
    let r = post(
        &s,
        "/v1/projects",
        &t.alice,
        json!({"title": "t", "purpose": "p", "tables": ["nope"], "epsilon": 1, "delta": 0, "duration_days": 3}),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("nope"));
    assert_eq!(get(&s, "/v1/audit?limit=0", &t.steward).status, 400);
    assert_eq!(get(&s, "/v1/audit?after=abc", &t.steward).status, 400);

    // 401: no token, malformed header, unknown token; with a WWW-Authenticate header.
    let r = call("GET", &format!("{}/v1/tables", s.url), None, None, None);
    assert_eq!((r.status, r.code().as_str()), (401, "unauthorized"));
    let r = agent().get(format!("{}/v1/tables", s.url)).header("Authorization", "Basic abc").call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers().get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(get(&s, "/v1/tables", &format!("sct_{}", "0".repeat(64))).status, 401);

    // 403: wrong role.
    assert_eq!(post(&s, &format!("/v1/projects/{id}/approve"), &t.alice, json!({})).code(), "forbidden");
    assert_eq!(get(&s, "/v1/audit", &t.alice).status, 403);
    assert_eq!(get(&s, "/v1/users", &t.steward).status, 403);

    // 404: unknown project, and a project the researcher does not belong to.
    assert_eq!(get(&s, "/v1/projects/999", &t.alice).status, 404);
    assert_eq!(get(&s, &format!("/v1/projects/{id}"), &t.carol).status, 404);
    assert_eq!(post(&s, &format!("/v1/projects/{id}/queries"), &t.carol, json!({"sql": COUNT, "epsilon": 0.1})).status, 404);
    assert_eq!(get(&s, "/v1/nothing-here", &t.alice).status, 404);

    // 409: wrong state, budget exhausted.
    assert_eq!(post(&s, &format!("/v1/projects/{id}/approve"), &t.steward, json!({})).status, 409);
    assert_eq!(post(&s, &format!("/v1/projects/{id}/resume"), &t.steward, json!({})).status, 409);
    assert_eq!(post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": COUNT, "epsilon": 1.0})).status, 200);
    let r = post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": COUNT, "epsilon": 0.1}));
    assert_eq!((r.status, r.code().as_str()), (409, "budget_exhausted"));

    // 413: a body over the limit, answered before anything is parsed or spent.
    let big = "x".repeat(10_000);
    let r = post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": big, "epsilon": 0.1}));
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));

    // 422: SQL the privacy rules refuse, with the rule named; nothing spent.
    let r =
        post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": "SELECT MAX(year_of_birth) FROM person", "epsilon": 0.1}));
    assert_eq!((r.status, r.json()["error"]["rule"].as_str()), (422, Some("min-max")));
    drop(s);

    // 429: a tight per-account rate limit; other accounts are unaffected.
    let s = Server::start(&fx.data, &["--rate-limit", "0.05", "--rate-burst", "3"]);
    let statuses: Vec<u16> = (0..6).map(|_| get(&s, "/v1/me", &t.alice).status).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].iter().all(|&c| c == 429), "{statuses:?}");
    let r = get(&s, "/v1/me", &t.alice);
    assert_eq!(r.code(), "rate_limited");
    assert_eq!(get(&s, "/v1/me", &t.bob).status, 200);
    drop(s);

    // 503 with code `timeout`: a request over the server's time limit.
    let s = Server::start(&fx.data, &["--request-timeout", "0.000001"]);
    let r = post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": COUNT, "epsilon": 0.1, "dry_run": true}));
    assert_eq!((r.status, r.code().as_str()), (503, "timeout"));
}

/// Each route × each caller: admin, steward, a member researcher, a non-member researcher, nobody.
#[test]
fn roles_and_membership_on_every_route() {
    let fx = warehouse(60);
    let t = accounts(&fx.data);
    let s = Server::start(&fx.data, &["--rate-limit", "0"]);
    let id = approved_project(&s, &t, 100.0);
    let p = format!("/v1/projects/{id}");
    let count = json!({"sql": "SELECT COUNT(*) FROM person", "epsilon": 0.01});
    // (method, path, body, [admin, steward, member, non-member, nobody])
    let table: Vec<(&str, String, Option<Value>, [u16; 5])> = vec![
        ("GET", "/health".into(), None, [200, 200, 200, 200, 200]),
        ("GET", "/openapi.json".into(), None, [200, 200, 200, 200, 200]),
        ("GET", "/v1/me".into(), None, [200, 200, 200, 200, 401]),
        ("GET", "/v1/tables".into(), None, [403, 200, 200, 200, 401]),
        ("GET", "/v1/ingests".into(), None, [403, 200, 403, 403, 401]),
        ("GET", "/v1/projects".into(), None, [403, 200, 200, 200, 401]),
        ("GET", p.clone(), None, [403, 200, 200, 404, 401]),
        ("GET", format!("{p}/queries"), None, [403, 200, 200, 404, 401]),
        ("POST", format!("{p}/queries"), Some(count.clone()), [403, 403, 200, 404, 401]),
        ("POST", format!("{p}/approve"), Some(json!({})), [403, 409, 403, 403, 401]),
        ("POST", format!("{p}/reject"), Some(json!({"reason": "r"})), [403, 409, 403, 403, 401]),
        ("POST", format!("{p}/resume"), None, [403, 409, 403, 403, 401]),
        ("POST", "/v1/projects".into(), Some(request_body(1.0)), [403, 403, 201, 201, 401]),
        ("GET", "/v1/audit".into(), None, [403, 200, 403, 403, 401]),
        ("GET", "/v1/audit/verify".into(), None, [403, 200, 403, 403, 401]),
        ("GET", "/v1/policy".into(), None, [403, 200, 403, 403, 401]),
        ("GET", "/v1/users".into(), None, [200, 403, 403, 403, 401]),
        ("POST", "/v1/users".into(), Some(json!({"name": "dave", "role": "researcher"})), [201, 403, 403, 403, 401]),
        ("POST", "/v1/users/dave/rotate".into(), None, [200, 403, 403, 403, 401]),
        ("POST", format!("{p}/suspend"), None, [403, 200, 403, 403, 401]),
        ("POST", format!("{p}/close"), None, [403, 200, 403, 403, 401]),
    ];
    let callers: [Option<&str>; 5] = [Some(&t.admin), Some(&t.steward), Some(&t.alice), Some(&t.carol), None];
    let names = ["admin", "steward", "member", "non-member", "nobody"];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &table {
        for (i, caller) in callers.iter().enumerate() {
            let r = call(method, &format!("{}{path}", s.url), *caller, body.as_ref(), None);
            if r.status != expected[i] {
                wrong.push(format!(
                    "{method} {path} as {}: {} (expected {}) {}",
                    names[i],
                    r.status,
                    expected[i],
                    String::from_utf8_lossy(&r.body)
                ));
            }
            if r.status >= 400 {
                assert!(r.json()["error"]["code"].is_string(), "{method} {path}: every error is JSON");
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn revoking_a_token_takes_effect_at_once() {
    let fx = warehouse(40);
    let t = accounts(&fx.data);
    let s = Server::start(&fx.data, &[]);
    assert_eq!(get(&s, "/v1/me", &t.alice).status, 200);
    let r = post(&s, "/v1/users/alice/revoke", &t.admin, json!({}));
    assert_eq!((r.status, r.json()["revoked"].as_u64()), (200, Some(1)));
    assert_eq!(get(&s, "/v1/me", &t.alice).status, 401);
    let rotated = post(&s, "/v1/users/alice/rotate", &t.admin, json!({})).json()["token"].as_str().unwrap().to_owned();
    assert_eq!(get(&s, "/v1/me", &rotated).json()["name"], "alice");
    let users = get(&s, "/v1/users", &t.admin);
    assert!(!String::from_utf8_lossy(&users.body).contains(&rotated[4..]), "token secrets are never listed");
    // The CLI revokes too, with the server running.
    let o = secretum(&["--data-dir", fx.data.to_str().unwrap(), "user", "revoke", "alice"]);
    assert!(o.status.success());
    assert_eq!(get(&s, "/v1/me", &rotated).status, 401);
    // Failed logins are audited, without the token.
    let audit = get(&s, "/v1/audit?action=auth.failed", &t.steward);
    let text = String::from_utf8_lossy(&audit.body).to_string();
    assert!(audit.json()["entries"].as_array().unwrap().len() >= 2);
    assert!(!text.contains(&rotated[4..]) && !text.contains(&t.alice[4..]));
}

#[test]
fn a_hundred_concurrent_queries_against_a_budget_for_ten_release_at_most_ten() {
    let fx = warehouse(200);
    let t = accounts(&fx.data);
    let s = Server::start(&fx.data, &["--rate-limit", "0"]);
    let id = approved_project(&s, &t, 1.0);
    let url = format!("{}/v1/projects/{id}/queries", s.url);
    let barrier = Arc::new(Barrier::new(100));
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let (url, barrier) = (url.clone(), barrier.clone());
            let token = if i % 2 == 0 { t.alice.clone() } else { t.bob.clone() };
            std::thread::spawn(move || {
                barrier.wait();
                // A hundred different questions (the same one would replay its release for free).
                let sql = format!("SELECT COUNT(*) FROM person WHERE year_of_birth > {}", 1800 + i);
                call("POST", &url, Some(&token), Some(&json!({"sql": sql, "epsilon": 0.1})), None).status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let released = statuses.iter().filter(|&&c| c == 200).count();
    assert!(released <= 10, "{released} releases from a budget for 10");
    assert_eq!(released, 10, "the budget is for exactly ten: {statuses:?}");
    assert!(statuses.iter().all(|&c| c == 200 || c == 409), "{statuses:?}");
    let p = get(&s, &format!("/v1/projects/{id}"), &t.alice).json();
    assert!(p["epsilon_spent"].as_f64().unwrap() <= 1.0 + 1e-9);
    assert_eq!(get(&s, "/v1/audit/verify", &t.steward).json()["broken"], Value::Null);
}

#[test]
fn a_server_killed_mid_load_loses_no_committed_debit_or_audit_entry() {
    let fx = warehouse(300);
    let t = accounts(&fx.data);
    generous_policy(&fx.data);
    let mut s = Server::start(&fx.data, &["--rate-limit", "0"]);
    let id = approved_project(&s, &t, 1000.0);
    let url = format!("{}/v1/projects/{id}/queries", s.url);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (url, token, stop) = (url.clone(), t.alice.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut answered = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"sql": "SELECT gender_concept_id, COUNT(*) FROM person JOIN measurement USING (person_id) GROUP BY 1", "epsilon": 0.5});
                    let r = agent().post(&url).header("Authorization", &format!("Bearer {token}")).send_json(&body);
                    match r {
                        Ok(mut resp) if resp.status().as_u16() == 200 => {
                            let v: Value = resp.body_mut().read_json().unwrap();
                            answered.push(v["query_id"].as_i64().unwrap());
                        }
                        _ => break, // the server is gone
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill(); // SIGKILL, mid-load
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: Vec<i64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(!answered.is_empty(), "some queries were answered before the kill");

    let s = Server::start(&fx.data, &["--rate-limit", "0"]);
    let ledger: Vec<i64> = get(&s, &format!("/v1/projects/{id}/queries"), &t.steward)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    for q in &answered {
        assert!(ledger.contains(q), "answered query {q} lost its debit");
    }
    let audit = get(&s, "/v1/audit?action=query.answered&limit=1000", &t.steward).json();
    let audited: Vec<String> = audit["entries"].as_array().unwrap().iter().map(|e| e["detail"].as_str().unwrap_or("").to_owned()).collect();
    for q in &answered {
        assert!(audited.contains(&format!("ledger entry {q}")), "answered query {q} has no audit entry");
    }
    assert_eq!(get(&s, "/v1/audit/verify", &t.steward).json()["broken"], Value::Null);
    // The project keeps working after the restart.
    assert_eq!(post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": COUNT, "epsilon": 0.1})).status, 200);
}

#[test]
fn the_cli_queries_through_the_server() {
    let fx = warehouse(200);
    let t = accounts(&fx.data);
    let s = Server::start(&fx.data, &[]);
    let id = approved_project(&s, &t, 2.0);
    let o = Command::new(BIN)
        .args(["query", "--server", &s.url, "--project", &id.to_string(), "--epsilon", "0.3", "--format", "json", COUNT])
        .env("SECRETUM_TOKEN", &t.alice)
        .env_remove("SECRETUM_DATA_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let a: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!((a["epsilon_spent"].as_f64().unwrap() - 0.3).abs() < 1e-12);
    let o = Command::new(BIN)
        .args(["query", "--server", &s.url, "--token", &t.alice, "--project", &id.to_string(), "SELECT person_id FROM person"])
        .env_remove("SECRETUM_DATA_DIR")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("aggregate-required"), "{}", stderr(&o));
}

#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    let generated = secretum_api::server::openapi::document();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("api/openapi.json");
    if std::env::var_os("SECRETUM_BLESS").is_some() {
        std::fs::write(&path, format!("{generated}\n")).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap();
    assert!(
        checked_in.trim_end() == generated.trim_end(),
        "api/openapi.json is out of date: run `SECRETUM_BLESS=1 cargo test --test suite openapi` (or `secretum openapi > api/openapi.json`)"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    for path in ["/health", "/v1/tables", "/v1/projects", "/v1/projects/{id}/queries", "/v1/audit", "/v1/projects/{id}/approve"] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
}

#[test]
fn sigterm_finishes_in_flight_queries_before_exiting() {
    let fx = warehouse(300);
    let t = accounts(&fx.data);
    generous_policy(&fx.data);
    let mut s = Server::start(&fx.data, &["--rate-limit", "0"]);
    let id = approved_project(&s, &t, 1000.0);
    let url = format!("{}/v1/projects/{id}/queries", s.url);
    let handles: Vec<_> = (0..6)
        .map(|c| {
            let (url, token) = (url.clone(), t.alice.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for n in 0.. {
                    // Each a new question: a repeated one would be a free replay, not a query.
                    let sql = format!(
                        "SELECT gender_concept_id, COUNT(*) FROM person JOIN measurement USING (person_id) WHERE year_of_birth <> {} GROUP BY 1",
                        c * 100_000 + n
                    );
                    let body = json!({"sql": sql, "epsilon": 0.5});
                    match agent().post(&url).header("Authorization", &format!("Bearer {token}")).send_json(&body) {
                        Ok(r) => statuses.push(r.status().as_u16()),
                        Err(_) => break, // no longer accepting connections
                    }
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let term = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().expect("kill -TERM");
    assert!(term.success());
    let exit = s.child.wait().expect("server exit");
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    let statuses: Vec<u16> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|&c| c == 200), "in-flight queries were answered, not cut: {statuses:?}");
    // Nothing was left half-done: every debit was settled as released.
    let conn = rusqlite::Connection::open(fx.data.join("catalog.sqlite")).unwrap();
    let unsettled: i64 = conn.query_row("SELECT COUNT(*) FROM ledger WHERE status != 'released'", [], |r| r.get(0)).unwrap();
    assert_eq!(unsettled, 0);
    let released: i64 = conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0)).unwrap();
    assert_eq!(released as usize, statuses.len());
}

#[test]
fn https_with_the_operators_certificate() {
    let fx = warehouse(100);
    let t = accounts(&fx.data);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("certificate");
    let (cert_pem, key_pem) = (fx.path("server.pem"), fx.path("server.key"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let s = Server::start(&fx.data, &["--tls-cert", cert_pem.to_str().unwrap(), "--tls-key", key_pem.to_str().unwrap()]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    // The project is set up locally (the CLI's steward mode) while the server runs.
    let o =
        secretum(&["--data-dir", fx.data.to_str().unwrap(), "project", "create", "--name", "tls", "--epsilon", "1", "--tables", "person"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let conn = rusqlite::Connection::open(fx.data.join("catalog.sqlite")).unwrap();
    conn.execute("INSERT INTO project_members (project_id, user_name) SELECT id, 'alice' FROM projects WHERE name = 'tls'", []).unwrap();
    let query = |extra: &[&str]| {
        Command::new(BIN)
            .args(["query", "--server", &s.url, "--token", &t.alice, "--project", "tls", "--epsilon", "0.1", "--format", "csv"])
            .args(extra)
            .arg("SELECT COUNT(*) AS n FROM person")
            .env_remove("SECRETUM_DATA_DIR")
            .output()
            .unwrap()
    };
    let o = query(&["--ca-cert", cert_pem.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("n,n_ci95_lo,n_ci95_hi\n"), "{}", stdout(&o));
    let o = query(&[]);
    assert!(!o.status.success(), "an untrusted certificate is refused");
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
}

#[test]
fn a_query_through_the_cli_and_one_through_the_server_leave_the_same_audit_entries() {
    let fx = warehouse(200);
    let t = accounts(&fx.data);
    let data = fx.data.to_str().unwrap().to_owned();
    // One project queried both ways: through the server as alice, locally by the steward.
    let s = Server::start(&fx.data, &[]);
    let id = approved_project(&s, &t, 5.0);
    let name = get(&s, &format!("/v1/projects/{id}"), &t.alice).json()["name"].as_str().unwrap().to_owned();
    let audit_actions = |after: i64| -> (i64, Vec<(String, String)>) {
        let page = get(&s, &format!("/v1/audit?after={after}&limit=1000"), &t.steward).json();
        let entries = page["entries"].as_array().unwrap().clone();
        let last = entries.last().map_or(after, |e| e["id"].as_i64().unwrap());
        (last, entries.iter().map(|e| (e["action"].as_str().unwrap().to_owned(), e["outcome"].as_str().unwrap().to_owned())).collect())
    };
    let (mut cursor, _) = audit_actions(0);
    let queries: [(&str, f64, bool); 4] = [
        (COUNT, 0.2, false),
        (COUNT, 0.2, true),
        ("SELECT person_id FROM person", 0.1, false),
        ("SELECT COUNT(*) FROM person", 50.0, false),
    ];
    let mut by_path = Vec::new();
    for via_server in [true, false] {
        for (sql, epsilon, dry) in queries {
            // Another ε on the second path: the same question at the same ε would be a replay.
            let epsilon = if via_server { epsilon } else { epsilon * 1.5 };
            if via_server {
                let _ = post(&s, &format!("/v1/projects/{id}/queries"), &t.alice, json!({"sql": sql, "epsilon": epsilon, "dry_run": dry}));
            } else {
                let e = epsilon.to_string();
                let mut args = vec!["query", "--data-dir", data.as_str(), "--project", name.as_str(), "--epsilon", e.as_str()];
                if dry {
                    args.push("--dry-run");
                }
                args.push(sql);
                let _ = secretum(&args);
            }
        }
        let (next, actions) = audit_actions(cursor);
        cursor = next;
        by_path.push(actions);
    }
    let want: Vec<(String, String)> = [
        ("query.submitted", "ok"),
        ("query.answered", "ok"),
        ("query.dry_run", "ok"),
        ("query.refused", "refused"),
        ("query.refused", "refused"),
    ]
    .iter()
    .map(|(a, o)| (a.to_string(), o.to_string()))
    .collect();
    assert_eq!(by_path[0], want, "through the server");
    assert_eq!(by_path[1], want, "through the local CLI");
    assert_eq!(get(&s, "/v1/audit/verify", &t.steward).json()["broken"], Value::Null);
}
