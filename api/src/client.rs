//! The CLI's HTTP client: `secretum query --server URL --token T ...` asks a running service,
//! receives the answer as an Arrow IPC stream and prints it like the local mode does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

use secretum_engine::dp::QueryRequest;
use secretum_engine::{Error, Result};

use crate::output::{self, Format};

fn agent(ca_cert: Option<&Path>) -> Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(600)));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::BadRequest(format!("{}: not a PEM certificate file: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::BadRequest(format!("{}: no certificate in this PEM file", path.display())));
        }
        config = config.tls_config(TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(certs))).build());
    }
    Ok(config.build().into())
}

/// The server's error body as this side's error (`code (status): message`).
fn api_error(status: u16, body: &str) -> Error {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .map(|e| format!("{} ({status}): {}", e["code"].as_str().unwrap_or("error"), e["message"].as_str().unwrap_or("")))
        .unwrap_or_else(|| format!("HTTP {status}: {}", body.chars().take(500).collect::<String>()));
    match status {
        404 => Error::not_found("answer", msg),
        409 => Error::Conflict(msg),
        400..=499 => Error::BadRequest(msg),
        _ => Error::internal(msg),
    }
}

/// Run one query on a server and print it.
pub fn query(server: &str, token: &str, ca_cert: Option<&Path>, req: &QueryRequest, format: Format) -> Result<()> {
    let url = format!("{}/v1/projects/{}/queries", server.trim_end_matches('/'), urlencode(&req.project));
    let mut body = serde_json::json!({ "sql": req.sql, "epsilon": req.epsilon, "dry_run": req.dry_run });
    if let Some(d) = req.delta {
        body["delta"] = d.into();
    }
    if let Some(t) = req.target_ci {
        body["target_ci"] = t.into();
    }
    if let Some(g) = req.max_groups {
        body["max_groups"] = g.into();
    }
    let mut resp = agent(ca_cert)?
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Accept", "application/vnd.apache.arrow.stream")
        .send_json(&body)
        .map_err(|e| Error::BadRequest(format!("cannot reach {server}: {e}")))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_vec()
        .map_err(|e| Error::BadRequest(format!("reading the answer from {server}: {e}")))?;
    if status != 200 {
        return Err(api_error(status, &String::from_utf8_lossy(&bytes)));
    }
    let answer = output::from_arrow_stream(&bytes)?;
    output::print(&answer, format);
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
