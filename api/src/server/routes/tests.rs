//! Handlers driven through the router in-process (`tower::ServiceExt::oneshot`), no socket: the
//! status codes, error bodies and answer shapes. The end-to-end tests in `tests/suite` start the
//! real binary.

use axum::body::Body as HttpBody;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use secretum_engine::governance::accounts::{Accounts, Role};
use secretum_engine::governance::{Governance, PolicyUpdate};
use secretum_engine::ingest::{self, IngestOptions};
use secretum_engine::{Warehouse, db};

use crate::server::app;
use crate::server::state::{AppState, Config};

struct Fixture {
    _dir: tempfile::TempDir,
    router: axum::Router,
    researcher: String,
    steward: String,
}

fn fixture(epsilon: f64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let raw = dir.path().join("raw");
    secretum_engine::synth::generate(300, 3, &raw, None).unwrap();
    Warehouse::init(&data, Some(&dir.path().join("key")), None).unwrap();
    let mut wh = Warehouse::open(&data).unwrap();
    let key = wh.key(None).unwrap();
    ingest::ingest(&mut wh, &key, &IngestOptions::new("person", &raw.join("person.csv"))).unwrap();
    let mut conn = db::open(&wh.layout.database()).unwrap();
    let (_, researcher) = Accounts::new(&mut conn).add("root", "alice", Role::Researcher).unwrap();
    let (_, steward) = Accounts::new(&mut conn).add("root", "sue", Role::Steward).unwrap();
    let mut g = Governance::open(&data).unwrap();
    // Counts under 50 are suppressed: a group nobody is in always is, a group of ~150 never is.
    g.set_policy("sue", &PolicyUpdate { patient_epsilon_cap: Some(1e6), suppression_threshold: Some(50), ..Default::default() }).unwrap();
    let known: Vec<String> = wh.schemas.tables.keys().cloned().collect();
    let req = secretum_engine::governance::ProjectRequest {
        title: "t".into(),
        purpose: "p".into(),
        tables: vec!["person".into()],
        epsilon,
        delta: 1e-6,
        duration_days: 30,
        members: vec![],
        accounting: Default::default(),
    };
    let p = g.request_project("alice", &req, &known, &["alice".into()]).unwrap();
    g.approve(&p.name, "sue", &Default::default()).unwrap();
    let config = Config { data_dir: data, ..Config::default() };
    let router = app(AppState::new(config).unwrap());
    Fixture { _dir: dir, router, researcher, steward }
}

async fn call(
    f: &Fixture,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
    accept: Option<&str>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(a) = accept {
        req = req.header(header::ACCEPT, a);
    }
    let req = match body {
        Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(HttpBody::from(b.to_owned())).unwrap(),
        None => req.body(HttpBody::empty()).unwrap(),
    };
    let resp = f.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec();
    (status, bytes)
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_their_status_and_code_in_one_place() {
    let f = fixture(1.0);
    let q = "/v1/projects/1/queries";
    // No token: 401; a malformed body: our 400, never axum's 415/422.
    assert_eq!(call(&f, "GET", "/v1/me", None, None, None).await.0, StatusCode::UNAUTHORIZED);
    let (s, b) = call(&f, "POST", q, Some(&f.researcher), Some("{not json"), None).await;
    assert_eq!((s, json_of(&b)["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed")));
    let (s, _) = call(&f, "POST", q, Some(&f.researcher), Some(r#"{"sql": "SELECT 1", "surprise": 1}"#), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown fields are a bad request");
    // A refused query: 422 with its rule; a budget refusal: 409.
    let (s, b) =
        call(&f, "POST", q, Some(&f.researcher), Some(r#"{"sql": "SELECT year_of_birth FROM person", "epsilon": 0.1}"#), None).await;
    assert_eq!((s, json_of(&b)["error"]["rule"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("aggregate-required")));
    let (s, b) = call(&f, "POST", q, Some(&f.researcher), Some(r#"{"sql": "SELECT COUNT(*) FROM person", "epsilon": 1.0}"#), None).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, b) = call(&f, "POST", q, Some(&f.researcher), Some(r#"{"sql": "SELECT COUNT(*) FROM person", "epsilon": 0.5}"#), None).await;
    assert_eq!((s, json_of(&b)["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("budget_exhausted")));
    // A table that does not exist is a refusal by rule, an unknown project a 404.
    let (s, _) = call(
        &f,
        "POST",
        "/v1/projects/99/queries",
        Some(&f.researcher),
        Some(r#"{"sql": "SELECT COUNT(*) FROM person", "epsilon": 0.1}"#),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Transitions: one handler for suspend, resume and close; anything else is not a route.
    assert_eq!(call(&f, "POST", "/v1/projects/1/explode", Some(&f.steward), None, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&f, "POST", "/v1/projects/1/suspend", Some(&f.researcher), None, None).await.0, StatusCode::FORBIDDEN);
    let (s, b) = call(&f, "POST", "/v1/projects/1/suspend", Some(&f.steward), Some(r#"{"reason": "review"}"#), None).await;
    assert_eq!((s, json_of(&b)["status"].as_str()), (StatusCode::OK, Some("suspended")));
    let (s, b) = call(&f, "POST", "/v1/projects/1/resume", Some(&f.steward), None, None).await;
    assert_eq!((s, json_of(&b)["status"].as_str()), (StatusCode::OK, Some("active")));
    let (s, _) = call(&f, "POST", "/v1/projects/1/resume", Some(&f.steward), None, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "resuming an active project conflicts with its state");
    // The policy shows both per-patient caps and what was spent against them.
    let (s, b) = call(&f, "GET", "/v1/policy", Some(&f.steward), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&b);
    assert!(v["policy"]["patient_delta_cap"].is_number() && v["delta_spent_all_projects"].is_number(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_has_the_same_arrow_schema_whatever_its_values() {
    let f = fixture(10.0);
    let q = "/v1/projects/1/queries";
    let arrow = "application/vnd.apache.arrow.stream";
    let schema_of = |bytes: Vec<u8>| {
        let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let s = r.schema();
        arrow::datatypes::Schema::new(s.fields().clone())
    };
    // Every cell suppressed (nobody born in 2026) against none suppressed.
    let all = r#"{"sql": "SELECT gender_concept_id, COUNT(*) AS n FROM person WHERE year_of_birth >= 1900 GROUP BY 1", "epsilon": 1.0}"#;
    let none = r#"{"sql": "SELECT gender_concept_id, COUNT(*) AS n FROM person WHERE year_of_birth = 2026 GROUP BY 1", "epsilon": 1.0}"#;
    let (s1, a) = call(&f, "POST", q, Some(&f.researcher), Some(all), Some(arrow)).await;
    let (s2, b) = call(&f, "POST", q, Some(&f.researcher), Some(none), Some(arrow)).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    let (a, b) = (schema_of(a), schema_of(b));
    assert_eq!(a, b);
    let names: Vec<&str> = a.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["gender_concept_id", "n", "n_ci95_lo", "n_ci95_hi"]);
    assert_eq!(a.field(1).data_type(), &arrow::datatypes::DataType::Int64);
    // JSON: keys plain, counts with intervals, suppressed cells null.
    let (_, j) = call(&f, "POST", q, Some(&f.researcher), Some(none), None).await;
    let j = json_of(&j);
    assert_eq!(j["columns"], json!(["gender_concept_id", "n"]));
    assert!(j["rows"].as_array().unwrap().iter().all(|r| r[1].is_null()), "{j}");
    // A dry run has the same shape, with expected half-widths.
    let dry = r#"{"sql": "SELECT gender_concept_id, COUNT(*) AS n FROM person GROUP BY 1", "epsilon": 0.2, "dry_run": true}"#;
    let (_, d) = call(&f, "POST", q, Some(&f.researcher), Some(dry), Some(arrow)).await;
    assert_eq!(schema_of(d), a);
    let (_, d) = call(&f, "POST", q, Some(&f.researcher), Some(dry), None).await;
    assert!(json_of(&d)["rows"][0][1]["ci95_half_width"].is_number());
}
