//! The CLI's HTTP client: `secretum query --server URL --token T ...` asks a running service.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

use secretum_engine::dp::Answer;
use secretum_engine::{Error, Result};

use crate::cli::QueryArgs;

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
            .map_err(|e| Error::Usage(format!("{}: not a PEM certificate file: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::Usage(format!("{}: no certificate in this PEM file", path.display())));
        }
        config = config.tls_config(TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(certs))).build());
    }
    Ok(config.build().into())
}

/// The server's error body as a message (`code: message`).
fn api_error(status: u16, body: &str) -> Error {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .map(|e| format!("{} ({status}): {}", e["code"].as_str().unwrap_or("error"), e["message"].as_str().unwrap_or("")))
        .unwrap_or_else(|| format!("HTTP {status}: {}", body.chars().take(500).collect::<String>()));
    Error::Usage(msg)
}

/// Run one query on a server and print it like the local mode does.
pub fn query(server: &str, token: &str, args: &QueryArgs) -> Result<()> {
    let format = args.format.as_str();
    if !matches!(format, "table" | "json" | "csv") {
        return Err(Error::Usage(format!("unknown --format {format:?}: expected table, json or csv")));
    }
    let url = format!("{}/v1/projects/{}/queries", server.trim_end_matches('/'), urlencode(&args.project));
    let mut body = serde_json::json!({ "sql": args.sql, "epsilon": args.epsilon, "dry_run": args.dry_run });
    if let Some(d) = args.delta {
        body["delta"] = d.into();
    }
    if let Some(t) = args.target_ci {
        body["target_ci"] = t.into();
    }
    if let Some(g) = args.max_groups {
        body["max_groups"] = g.into();
    }
    let mut resp = agent(args.ca_cert.as_deref())?
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(&body)
        .map_err(|e| Error::Usage(format!("cannot reach {server}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(|e| Error::Usage(format!("reading the answer from {server}: {e}")))?;
    if status != 200 {
        return Err(api_error(status, &text));
    }
    let answer: Answer = serde_json::from_str(&text).map_err(|e| Error::Usage(format!("unexpected answer from {server}: {e}")))?;
    crate::local::print_answer(&answer, format);
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
