//! `secretum audit verify|export`.

use std::io::Write;
use std::path::Path;

use secretum_engine::audit;
use secretum_engine::db::{self, Layout};
use secretum_engine::{Error, Result, Warehouse};

/// Recompute the hash chain; an error names the first broken entry.
pub fn verify(data_dir: &Path) -> Result<()> {
    Warehouse::open(data_dir)?;
    let conn = db::open(&Layout::new(data_dir).database())?;
    let v = audit::verify(&conn)?;
    match v.broken {
        None => {
            println!("audit log verified: {} entries, head {}", v.entries, v.head);
            Ok(())
        }
        Some(b) => {
            Err(Error::Conflict(format!("audit log broken at entry {}: {} ({} entries verified before it)", b.id, b.reason, v.entries)))
        }
    }
}

/// Write the log as JSON lines, to `out` or stdout.
pub fn export(data_dir: &Path, out: Option<&Path>) -> Result<()> {
    Warehouse::open(data_dir)?;
    let conn = db::open(&Layout::new(data_dir).database())?;
    let entries = audit::entries(&conn, &audit::Filter::default())?;
    let target = out.map(Path::to_path_buf).unwrap_or_else(|| "stdout".into());
    let mut w: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| Error::io(p, e))?)),
        None => Box::new(std::io::stdout().lock()),
    };
    for e in &entries {
        let line = serde_json::to_string(e).map_err(|e| Error::internal(format!("audit entry as JSON: {e}")))?;
        writeln!(w, "{line}").map_err(|e| Error::io(&target, e))?;
    }
    w.flush().map_err(|e| Error::io(&target, e))?;
    if let Some(p) = out {
        eprintln!("wrote {} entries to {}", entries.len(), p.display());
    }
    Ok(())
}
