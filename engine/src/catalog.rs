//! The catalog: which Parquet files make up each table, and where they came from.
//!
//! Embedded SQLite ([`crate::db`]). An ingest becomes visible in exactly one
//! transaction that records the ingest and all of its files; queries read only the files the
//! catalog lists, so a file on disk that no committed transaction names is never read.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::now_rfc3339;
use crate::error::{Error, Result};

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the data directory.
    pub path: String,
    pub ingest_id: String,
    pub rows: u64,
    pub bytes: u64,
    /// The most rows one patient has among the rows of the ingest that wrote this file (the
    /// same for all its files); `None` when not known (a public table, or a file committed
    /// before this was recorded).
    pub unit_rows_max: Option<u64>,
    /// Every patient with more rows than this in the ingest that wrote this file is listed with
    /// its rows ([`Catalog::listed`], [`listing`]); `None` when not recorded.
    pub unit_rows_listed_above: Option<u64>,
    /// The ingest that wrote this file holds no patient of the table's ingests committed before
    /// it (`person`: its commit checks that the table's files are those its patients were
    /// checked against, [`NewIngest::unique_over`]).
    pub unit_disjoint: bool,
}

/// Per ingest of `files`, the given per-file value (the same for all files of an ingest), or
/// `None` when one is unknown; and whether the ingests hold disjoint sets of patients (each
/// holds none of the ones before it), so that a patient's rows are in one ingest only.
fn per_ingest(files: &[FileEntry], value: impl Fn(&FileEntry) -> Option<u64>) -> Option<(std::collections::BTreeMap<&str, u64>, bool)> {
    let mut out = std::collections::BTreeMap::new();
    for f in files {
        out.insert(f.ingest_id.as_str(), value(f)?);
    }
    Some((out, files.iter().all(|f| f.unit_disjoint)))
}

/// A patient's most rows in a table from its most rows in each ingest: their sum, or their
/// largest when the ingests hold disjoint sets of patients (the patient is in one of them).
fn over_ingests(per_ingest: impl Iterator<Item = u64>, disjoint: bool) -> u64 {
    match disjoint {
        true => per_ingest.max().unwrap_or(0),
        false => per_ingest.fold(0u64, u64::saturating_add),
    }
}

/// The most patients one ingest lists by their rows ([`listing`]).
pub const LISTED_MAX: usize = 1024;

/// What an ingest records of its patients with the most rows: a threshold, and every patient
/// with more rows than it, with their rows. The threshold is the smallest (at least 1) that
/// lists at most [`LISTED_MAX`] patients, so the list stays small whatever the data.
///
/// With these lists a query knows, without reading data, which patients can have more rows than
/// a bound in a table ([`Heavy::over`]): only their rows need the per-query truncation.
pub fn listing(counts: impl IntoIterator<Item = (i64, u64)>) -> (u64, Vec<(i64, u64)>) {
    listing_at_most(counts, LISTED_MAX)
}

fn listing_at_most(counts: impl IntoIterator<Item = (i64, u64)>, max: usize) -> (u64, Vec<(i64, u64)>) {
    let mut all: Vec<(i64, u64)> = counts.into_iter().collect();
    let above = if all.iter().filter(|(_, n)| *n > 1).count() <= max {
        1
    } else {
        // The (max + 1)-th most rows: strictly more is at most `max` patients, and any smaller
        // threshold would list more.
        let (_, nth, _) = all.select_nth_unstable_by(max, |a, b| b.1.cmp(&a.1));
        nth.1
    };
    all.retain(|(_, n)| *n > above);
    all.sort_unstable();
    (above, all)
}

/// What the catalog knows of the patients of a table with the most rows, from each of its
/// ingests' listings: every patient not listed has at most `floor` rows in the table, and a
/// listed one at most its `most`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heavy {
    floor: u64,
    /// (patient, the most rows it can have), by patient.
    most: Vec<(i64, u64)>,
}

/// Patients [`Heavy::over`] returns at most: a plan names them (in a filter of its own, never
/// shown), and a longer list would cost every query its planning.
pub const HEAVY_MAX: usize = 1024;

impl Heavy {
    /// The patients that can have more than `k` rows in the table, when the catalog accounts
    /// for every other patient (every patient not returned has at most `k` rows); `None` when
    /// it does not, or when they are more than [`HEAVY_MAX`].
    pub fn over(&self, k: u64) -> Option<Vec<i64>> {
        if self.floor > k {
            return None;
        }
        let over: Vec<i64> = self.most.iter().filter(|(_, m)| *m > k).map(|(p, _)| *p).collect();
        (over.len() <= HEAVY_MAX).then_some(over)
    }
}

/// [`Heavy`] for a table made of `files`, from the listings of their ingests (`listed`, by
/// ingest). A patient's rows in the table are the sum of its rows in each ingest; in one ingest
/// they are its listed rows if it is listed there, else at most the smaller of the ingest's
/// threshold and its most rows for one patient. `None` when an ingest recorded no listing.
///
/// When the ingests hold disjoint sets of patients, a patient's rows are those of one ingest:
/// the floor is the largest of the ingests' thresholds, and a listed patient has its listed rows.
pub fn heavy(files: &[FileEntry], listed: &std::collections::BTreeMap<String, Vec<(i64, u64)>>) -> Option<Heavy> {
    let (unlisted, disjoint) = per_ingest(files, |f| Some(f.unit_rows_listed_above?.min(f.unit_rows_max?)))?;
    let floor = over_ingests(unlisted.values().copied(), disjoint);
    let mut most: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
    for (ingest, otherwise) in &unlisted {
        for (p, n) in listed.get(*ingest).map(Vec::as_slice).unwrap_or_default() {
            let m = most.entry(*p).or_insert(floor);
            *m = match disjoint {
                true => (*m).max(*n),
                // This ingest's rows of the patient replace the bound the floor counted for it.
                false => m.saturating_add(n.saturating_sub(*otherwise)),
            };
        }
    }
    Some(Heavy { floor, most: most.into_iter().collect() })
}

/// An upper bound on the rows any one patient has in a table made of `files`: the sum over
/// their ingests of each ingest's most rows for one patient (exact when one ingest wrote the
/// table, larger when several ingests hold rows of the same patients), or the largest of them
/// when the ingests hold disjoint sets of patients. `None` when an ingest did not record it.
/// Computed from the file list a query reads, so the two always agree.
pub fn unit_rows_bound(files: &[FileEntry]) -> Option<u64> {
    let (most, disjoint) = per_ingest(files, |f| f.unit_rows_max)?;
    Some(over_ingests(most.values().copied(), disjoint))
}

/// One committed ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestEntry {
    pub id: String,
    pub table: String,
    pub source_path: String,
    pub source_sha256: String,
    pub rows: u64,
    pub bytes: u64,
    pub committed_at: String,
    pub actor: String,
}

/// Per-table totals for the steward's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    pub table: String,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// A new ingest to commit.
pub struct NewIngest<'a> {
    pub id: &'a str,
    pub table: &'a str,
    pub source_path: &'a str,
    pub source_sha256: &'a str,
    pub actor: &'a str,
    pub allow_duplicate: bool,
    /// The table's committed files are replaced by these, in the same transaction.
    pub replace: bool,
    pub files: &'a [FileEntry],
    /// The patients [`listing`] lists, with their rows (none for a public table).
    pub listed: &'a [(i64, u64)],
    /// For a table whose privacy unit is its primary key (`person`): the table's files the
    /// ingest's patients were checked against. The commit fails if the table's files are no
    /// longer exactly these (another ingest committed meanwhile), so that the check holds for
    /// what is committed; the files are then recorded as holding none of the earlier patients.
    pub unique_over: Option<&'a [String]>,
}

pub struct Catalog {
    conn: Connection,
}

impl Catalog {
    /// Open (creating if needed) the warehouse database.
    pub fn open(path: &Path) -> Result<Catalog> {
        Ok(Catalog { conn: crate::db::open(path)? })
    }

    pub fn into_connection(self) -> Connection {
        self.conn
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// The committed files of one table, in commit order.
    pub fn files(&self, table: &str) -> Result<Vec<FileEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.path, f.ingest_id, f.rows, f.bytes, f.unit_rows_max, f.unit_rows_listed_above, f.unit_disjoint
             FROM files f JOIN ingests i ON i.id = f.ingest_id
             WHERE f.table_name = ?1 ORDER BY i.committed_at, f.path",
        )?;
        let rows = stmt.query_map([table], |r| {
            Ok(FileEntry {
                path: r.get(0)?,
                ingest_id: r.get(1)?,
                rows: r.get::<_, i64>(2)? as u64,
                bytes: r.get::<_, i64>(3)? as u64,
                unit_rows_max: r.get::<_, Option<i64>>(4)?.map(|m| m as u64),
                unit_rows_listed_above: r.get::<_, Option<i64>>(5)?.map(|m| m as u64),
                unit_disjoint: r.get::<_, i64>(6)? != 0,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The patients each of these ingests listed with their rows ([`listing`]), by ingest.
    pub fn listed<'a>(&self, ingests: impl IntoIterator<Item = &'a str>) -> Result<std::collections::BTreeMap<String, Vec<(i64, u64)>>> {
        let mut stmt = self.conn.prepare_cached("SELECT unit, rows FROM unit_rows WHERE ingest_id = ?1")?;
        let mut out = std::collections::BTreeMap::new();
        for id in ingests {
            let rows = stmt.query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)))?;
            out.insert(id.to_owned(), rows.collect::<rusqlite::Result<Vec<_>>>()?);
        }
        Ok(out)
    }

    /// The version of the data: a digest of every committed file (each ingest writes new files,
    /// a vocabulary load replaces them), so any commit gives a new version.
    pub fn data_version(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut stmt = self.conn.prepare_cached("SELECT path, ingest_id, rows FROM files ORDER BY path")?;
        let mut h = Sha256::new();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            h.update(r.get_ref(0)?.as_str().unwrap_or("").as_bytes());
            h.update(b"\0");
            h.update(r.get_ref(1)?.as_str().unwrap_or("").as_bytes());
            h.update(b"\0");
            h.update(r.get::<_, i64>(2)?.to_le_bytes());
        }
        Ok(hex::encode(&h.finalize()[..16]))
    }

    pub fn is_referenced(&self, path: &str) -> Result<bool> {
        Ok(self.conn.query_row("SELECT 1 FROM files WHERE path = ?1", [path], |_| Ok(())).optional()?.is_some())
    }

    pub fn ingests(&self) -> Result<Vec<IngestEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, table_name, source_path, source_sha256, rows, bytes, committed_at, actor FROM ingests ORDER BY committed_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(IngestEntry {
                id: r.get(0)?,
                table: r.get(1)?,
                source_path: r.get(2)?,
                source_sha256: r.get(3)?,
                rows: r.get::<_, i64>(4)? as u64,
                bytes: r.get::<_, i64>(5)? as u64,
                committed_at: r.get(6)?,
                actor: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Totals per table, for every table in `tables` (zero when nothing is ingested yet).
    pub fn summary(&self, tables: impl IntoIterator<Item = String>) -> Result<Vec<TableSummary>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT COUNT(*), COALESCE(SUM(rows), 0), COALESCE(SUM(bytes), 0) FROM files WHERE table_name = ?1")?;
        tables
            .into_iter()
            .map(|table| {
                let (files, rows, bytes): (i64, i64, i64) = stmt.query_row([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(TableSummary { table, files: files as u64, rows: rows as u64, bytes: bytes as u64 })
            })
            .collect()
    }

    /// Commit one ingest and all its files in one transaction. The duplicate check runs inside
    /// the transaction, so two concurrent ingests of the same file cannot both commit.
    pub fn commit_ingest(&mut self, ingest: &NewIngest<'_>) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !ingest.allow_duplicate {
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT id, committed_at FROM ingests WHERE table_name = ?1 AND source_sha256 = ?2",
                    [ingest.table, ingest.source_sha256],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((id, at)) = existing {
                return Err(duplicate_error(ingest.table, &id, &at));
            }
        }
        if let Some(checked) = ingest.unique_over {
            let mut stmt = tx.prepare_cached("SELECT path FROM files WHERE table_name = ?1 ORDER BY path")?;
            let now: Vec<String> = stmt.query_map([ingest.table], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            let mut checked = checked.to_vec();
            checked.sort();
            if now != checked && !ingest.replace {
                return Err(Error::Conflict(format!(
                    "another ingest of `{}` committed while this one ran, so its patients were not checked against it; nothing was committed. Run this ingest again",
                    ingest.table
                )));
            }
        }
        let rows: u64 = ingest.files.iter().map(|f| f.rows).sum();
        let bytes: u64 = ingest.files.iter().map(|f| f.bytes).sum();
        if ingest.replace {
            // The previous files stop being part of the table in this transaction; they stay on
            // disk, unread (the catalog names what is read).
            tx.execute("DELETE FROM files WHERE table_name = ?1", [ingest.table])?;
        }
        tx.execute(
            "INSERT INTO ingests (id, table_name, source_path, source_sha256, rows, bytes, committed_at, actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                ingest.id,
                ingest.table,
                ingest.source_path,
                ingest.source_sha256,
                rows as i64,
                bytes as i64,
                now_rfc3339(),
                ingest.actor
            ],
        )?;
        for f in ingest.files {
            tx.execute(
                "INSERT INTO files (path, ingest_id, table_name, rows, bytes, unit_rows_max, unit_rows_listed_above, unit_disjoint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    f.path,
                    ingest.id,
                    ingest.table,
                    f.rows as i64,
                    f.bytes as i64,
                    f.unit_rows_max.map(|m| m as i64),
                    f.unit_rows_listed_above.map(|m| m as i64),
                    ingest.unique_over.is_some() as i64
                ],
            )?;
        }
        let mut listed = tx.prepare_cached("INSERT INTO unit_rows (ingest_id, unit, rows) VALUES (?1, ?2, ?3)")?;
        for (unit, rows) in ingest.listed {
            listed.execute(params![ingest.id, unit, *rows as i64])?;
        }
        drop(listed);
        // The audit entry commits with the ingest, or neither does.
        let detail = format!(
            "ingest {} of {} ({}): {} files, {rows} rows, {bytes} bytes",
            ingest.id,
            ingest.source_path,
            ingest.source_sha256,
            ingest.files.len()
        );
        crate::audit::append_in(
            &tx,
            &crate::audit::Event {
                actor: ingest.actor,
                action: "ingest.committed",
                outcome: "ok",
                detail: Some(&detail),
                project: None,
                ..Default::default()
            },
        )?;
        tx.commit()?;
        Ok(())
    }
}

fn duplicate_error(table: &str, id: &str, at: &str) -> Error {
    Error::Conflict(format!(
        "this file's content was already ingested into `{table}` (ingest {id} at {at}); nothing was committed. Pass --allow-duplicate if loading it again is intended"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ingest: &str, m: Option<u64>) -> FileEntry {
        FileEntry {
            path: format!("{ingest}-{m:?}"),
            ingest_id: ingest.into(),
            rows: 1,
            bytes: 1,
            unit_rows_max: m,
            unit_rows_listed_above: None,
            unit_disjoint: false,
        }
    }

    #[test]
    fn an_ingest_lists_its_patients_above_the_smallest_threshold_that_keeps_the_list_short() {
        // Few patients with more than one row: all of them are listed.
        let (above, listed) = listing((0..3000).map(|p| (p, if p % 10 == 0 { 5 } else { 1 })));
        assert_eq!((above, listed.len()), (1, 300));
        // Patient p has p + 1 rows: the 1,025th most is 3000 - 1024 = 1976.
        let (above, listed) = listing((0..3000).map(|p| (p, p as u64 + 1)));
        assert_eq!(above, 1976);
        assert_eq!(listed.len(), LISTED_MAX);
        assert!(listed.iter().all(|(p, n)| *n == *p as u64 + 1 && *n > above));
        // Ties at the threshold are left out, so the list never grows past its bound.
        let (above, listed) = listing((0..3000).map(|p| (p, 7)));
        assert_eq!((above, listed.len()), (7, 0));
    }

    proptest::proptest! {
        /// Whatever the ingests hold, a patient the catalog does not return for `k` has at most
        /// `k` rows in the table: the listed truncation then keeps all of its rows, as the full
        /// one would (`dp::rewrite`). Short lists (at most 1 to 4 patients) make the thresholds
        /// bite, as 1,024 does on real tables.
        #[test]
        fn every_patient_the_catalog_leaves_out_is_within_the_bound(
            ingests in proptest::collection::vec(proptest::collection::vec((0i64..12, 1u64..60), 1..30), 1..5),
            max in 1usize..5,
        ) {
            let mut totals: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
            let mut files = Vec::new();
            let mut listed = std::collections::BTreeMap::new();
            for (i, rows) in ingests.iter().enumerate() {
                let mut counts: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
                for (p, n) in rows {
                    *counts.entry(*p).or_insert(0) += n;
                    *totals.entry(*p).or_insert(0) += n;
                }
                let most = counts.values().copied().max();
                let (above, list) = listing_at_most(counts, max);
                proptest::prop_assert!(list.len() <= max);
                let id = format!("i{i}");
                // Two files per ingest, as a large ingest writes.
                for part in 0..2 {
                    files.push(FileEntry {
                        path: format!("{id}-{part}"),
                        ingest_id: id.clone(),
                        rows: 1,
                        bytes: 1,
                        unit_rows_max: most,
                        unit_rows_listed_above: Some(above),
                        unit_disjoint: false,
                    });
                }
                listed.insert(id, list);
            }
            let heavy = heavy(&files, &listed).unwrap();
            let sum_of_most: u64 = ingests.len() as u64 * 60 * 30;
            let mut answered = false;
            for k in 1..=sum_of_most {
                if let Some(over) = heavy.over(k) {
                    answered = true;
                    for (p, n) in &totals {
                        proptest::prop_assert!(*n <= k || over.contains(p), "patient {p} has {n} rows > {k}, not returned: {heavy:?}");
                    }
                }
            }
            // At the sum of every ingest's most rows, nobody can be over: the listing answers.
            proptest::prop_assert!(answered);
        }
    }

    #[test]
    fn the_catalog_does_not_answer_for_a_table_with_an_ingest_that_listed_nothing() {
        let mut old = file("a", Some(3));
        assert!(heavy(&[old.clone()], &Default::default()).is_none());
        old.unit_rows_listed_above = Some(1);
        let listed = [("a".to_owned(), vec![(7, 3)])].into_iter().collect();
        assert_eq!(heavy(&[old.clone()], &listed).unwrap().over(2), Some(vec![7]));
        assert!(heavy(&[old, file("b", Some(2))], &listed).is_none());
    }

    #[test]
    fn ingests_of_disjoint_patients_bound_a_patient_by_their_largest_not_their_sum() {
        let disjoint =
            |ingest: &str, most: u64| FileEntry { unit_disjoint: true, unit_rows_listed_above: Some(2), ..file(ingest, Some(most)) };
        let (a, b) = (disjoint("a", 5), disjoint("b", 3));
        assert_eq!(unit_rows_bound(&[a.clone(), a.clone(), b.clone()]), Some(5));
        let listed = [("a".to_owned(), vec![(7, 5)]), ("b".to_owned(), vec![(8, 3)]), ("c".to_owned(), vec![])].into_iter().collect();
        let heavy = heavy(&[a.clone(), b.clone()], &listed).unwrap();
        assert_eq!((heavy.over(2), heavy.over(4), heavy.over(5)), (Some(vec![7, 8]), Some(vec![7]), Some(vec![])));
        assert_eq!(heavy.over(1), None);
        // One ingest not known to hold new patients: they may repeat, the rows add up.
        let c = FileEntry { unit_rows_listed_above: Some(2), ..file("c", Some(2)) };
        assert_eq!(unit_rows_bound(&[a.clone(), b.clone(), c.clone()]), Some(10));
        assert_eq!(super::heavy(&[a, b, c], &listed).unwrap().over(5), None);
    }

    #[test]
    fn a_person_ingest_commits_only_over_the_files_its_patients_were_checked_against() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let commit = |catalog: &mut Catalog, id: &str, checked: &[String]| {
            let files = [FileEntry { unit_rows_listed_above: Some(1), ..file(id, Some(1)) }];
            catalog.commit_ingest(&NewIngest {
                id,
                table: "person",
                source_path: id,
                source_sha256: id,
                actor: "test",
                allow_duplicate: false,
                replace: false,
                files: &files,
                listed: &[],
                unique_over: Some(checked),
            })
        };
        commit(&mut catalog, "a", &[]).unwrap();
        // Checked against an empty table, but `a` committed meanwhile: refused, nothing changes.
        let err = commit(&mut catalog, "b", &[]).unwrap_err();
        assert!(matches!(err, Error::Conflict(ref m) if m.contains("Run this ingest again")), "{err}");
        assert_eq!(catalog.files("person").unwrap().len(), 1);
        assert!(catalog.ingests().unwrap().iter().all(|i| i.id == "a"));
        // Checked against `a`'s files: committed, and one row per patient over both ingests.
        let checked: Vec<String> = catalog.files("person").unwrap().into_iter().map(|f| f.path).collect();
        commit(&mut catalog, "b", &checked).unwrap();
        let files = catalog.files("person").unwrap();
        assert!(files.iter().all(|f| f.unit_disjoint));
        assert_eq!(unit_rows_bound(&files), Some(1));
    }

    #[test]
    fn rows_per_patient_add_up_over_ingests_and_are_unknown_when_one_is() {
        assert_eq!(unit_rows_bound(&[]), Some(0));
        // One ingest's files share its maximum; two ingests may hold rows of the same patient.
        assert_eq!(unit_rows_bound(&[file("a", Some(3)), file("a", Some(3))]), Some(3));
        assert_eq!(unit_rows_bound(&[file("a", Some(3)), file("b", Some(2))]), Some(5));
        // A file committed before the count was recorded: no bound, the truncation runs.
        assert_eq!(unit_rows_bound(&[file("a", Some(3)), file("b", None)]), None);
    }
}
