//! OMOP CDM exports as hospitals ship them: which columns the CDM defines (v5.4, and the v5.3
//! names v5.4 renamed), which source shape a file has, and how an export's columns map onto a
//! table's stored columns.
//!
//! Two source shapes feed the same stored tables:
//! - a raw extract ([`Shape::Extract`]): direct identifiers (the NIR, names, the exact birth date)
//!   that the schema's `source`/`generalize` columns pseudonymize and generalize;
//! - an OMOP export ([`Shape::Omop`]): the CDM's own columns. Its `person_id` is the hospital's
//!   internal patient number, an identifier: it is re-keyed with the steward's HMAC key into the
//!   stored `person_id` (the same source id gives the same pseudonym in every table), never
//!   stored as shipped. Record ids and visit ids are pseudonymized as the schema says; the CDM
//!   columns a schema does not declare (free text, provider and care site ids, datetimes,
//!   `person_source_value`) are dropped and reported, and so are columns a site added.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::schema::{ColumnPolicy, ColumnType, Generalize, Role, TablePolicy};

/// The OMOP CDM v5.4 field-level specification, as published by OHDSI.
pub const FIELD_LEVEL_SPEC: &str = include_str!("../../schemas/omop/OMOP_CDMv5.4_Field_Level.csv");

/// A CDM version an export follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdmVersion {
    V53,
    V54,
}

impl CdmVersion {
    pub fn parse(s: &str) -> Option<CdmVersion> {
        match s.trim().trim_start_matches(['v', 'V']) {
            "5.3" | "5.3.1" | "53" => Some(CdmVersion::V53),
            "5.4" | "5.4.0" | "54" => Some(CdmVersion::V54),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CdmVersion::V53 => "5.3",
            CdmVersion::V54 => "5.4",
        }
    }
}

/// Columns v5.4 renamed: (table, v5.3 name, v5.4 name).
const V53_RENAMES: &[(&str, &str, &str)] = &[
    ("visit_occurrence", "admitting_source_concept_id", "admitted_from_concept_id"),
    ("visit_occurrence", "admitting_source_value", "admitted_from_source_value"),
    ("visit_occurrence", "discharge_to_concept_id", "discharged_to_concept_id"),
    ("visit_occurrence", "discharge_to_source_value", "discharged_to_source_value"),
    ("visit_detail", "admitting_source_concept_id", "admitted_from_concept_id"),
    ("visit_detail", "admitting_source_value", "admitted_from_source_value"),
    ("visit_detail", "discharge_to_concept_id", "discharged_to_concept_id"),
    ("visit_detail", "discharge_to_source_value", "discharged_to_source_value"),
    ("visit_detail", "visit_detail_parent_id", "parent_visit_detail_id"),
];

/// One field of the specification.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub required: bool,
    pub datatype: String,
    /// The OMOP domain its concept ids come from (`Condition`, `Gender`, ...), if any.
    pub fk_domain: Option<String>,
}

/// The v5.4 fields of every CDM table, in specification order.
pub fn spec() -> &'static BTreeMap<String, Vec<Field>> {
    static SPEC: OnceLock<BTreeMap<String, Vec<Field>>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut out: BTreeMap<String, Vec<Field>> = BTreeMap::new();
        let mut reader = csv::ReaderBuilder::new().from_reader(FIELD_LEVEL_SPEC.as_bytes());
        for record in reader.records().flatten() {
            let get = |i: usize| record.get(i).unwrap_or("").trim().to_owned();
            let fk = get(10);
            out.entry(get(0).to_ascii_lowercase()).or_default().push(Field {
                name: get(1).to_ascii_lowercase(),
                required: get(2).eq_ignore_ascii_case("yes"),
                datatype: get(3).to_ascii_lowercase(),
                fk_domain: (!fk.is_empty() && fk != "NA").then_some(fk),
            });
        }
        out
    })
}

/// Whether a column name is a CDM column of the table (v5.4, or a v5.3 name).
pub fn is_cdm_column(table: &str, column: &str) -> bool {
    spec().get(table).is_some_and(|f| f.iter().any(|f| f.name == column))
        || V53_RENAMES.iter().any(|(t, old, _)| *t == table && *old == column)
}

/// Which shape a file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Direct identifiers, pseudonymized and generalized by the schema.
    Extract,
    /// An OMOP CDM export: source ids re-keyed. Its version, when its columns show it (or the
    /// steward gave it).
    Omop(Option<CdmVersion>),
}

impl Shape {
    pub fn name(self) -> String {
        match self {
            Shape::Extract => "raw extract".into(),
            Shape::Omop(Some(v)) => format!("OMOP CDM v{} export", v.name()),
            Shape::Omop(None) => "OMOP CDM export".into(),
        }
    }
}

/// A header as it will be mapped: names trimmed and lowercased, v5.3 names renamed to v5.4.
/// Returns the names and the version the header shows (v5.3 names present: 5.3; v5.4-only
/// renamed names: 5.4; neither: `None`).
pub fn normalize_header(table: &str, header: &[String], given: Option<CdmVersion>) -> (Vec<String>, Option<CdmVersion>) {
    let lower: Vec<String> =
        header.iter().map(|h| h.trim().trim_start_matches('\u{feff}').trim_matches('"').trim().to_ascii_lowercase()).collect();
    let has53 = lower.iter().any(|h| V53_RENAMES.iter().any(|(t, old, _)| *t == table && old == h));
    let has54 = lower.iter().any(|h| V53_RENAMES.iter().any(|(t, _, new)| *t == table && new == h));
    let seen = match (has53, has54) {
        (true, false) => Some(CdmVersion::V53),
        (false, true) => Some(CdmVersion::V54),
        _ => None,
    };
    // A version given by the steward wins; v5.3 names are renamed unless it says 5.4.
    let rename = given.map_or(true, |v| v == CdmVersion::V53);
    let names = lower
        .into_iter()
        .map(|h| match V53_RENAMES.iter().find(|(t, old, _)| rename && *t == table && *old == h) {
            Some((_, _, new)) => (*new).to_owned(),
            None => h,
        })
        .collect();
    (names, given.or(seen))
}

/// The shape of a file for `policy`, from its (normalized) header: a raw extract names the
/// privacy unit's source identifier (e.g. `nir`); an OMOP export names `person_id` itself.
pub fn detect(policy: &TablePolicy, header: &[String]) -> Option<Shape> {
    if policy.public {
        return Some(Shape::Omop(None));
    }
    let unit = policy.privacy_unit();
    let source = unit.source.as_deref().unwrap_or(&unit.name);
    if source != unit.name && header.iter().any(|h| h == source) {
        Some(Shape::Extract)
    } else if header.iter().any(|h| *h == unit.name) {
        Some(Shape::Omop(None))
    } else {
        None
    }
}

/// The policy an OMOP export of the table is read with: the same stored columns (so the files
/// of both shapes make one table), read from the CDM's columns.
///
/// - The privacy unit is derived from the export's `person_id`, read as an identifier (an
///   integer, canonicalized so that `10204.0` and `10204` are one patient) and pseudonymized.
/// - A column generalized from a raw identifier (`year_of_birth` from `birth_date`) is read as
///   the CDM column of the same name, if the CDM has one (`year_of_birth`), and is otherwise
///   NULL (`department`: the CDM keeps a `location_id`, dropped).
/// - The raw extract's identifiers (`nir`, names, birth date, postcode) are not expected.
pub fn input_policy(policy: &TablePolicy) -> TablePolicy {
    if policy.public {
        return policy.clone();
    }
    let unit_name = policy.privacy_unit().name.clone();
    let mut columns: Vec<ColumnPolicy> = Vec::with_capacity(policy.columns.len() + 1);
    // The export's patient number: an identifier, never stored, the unit's source.
    columns.push(ColumnPolicy {
        name: unit_name.clone(),
        ty: ColumnType::Integer,
        role: Role::Identifier,
        nullable: false,
        source: None,
        generalize: None,
        pseudonymize: false,
        check: None,
        bounds: None,
        on_out_of_bounds: Default::default(),
        domain: None,
        description: Some("the export's person_id: re-keyed, never stored".into()),
    });
    for c in policy.columns.iter().filter(|c| c.is_stored()) {
        let mut c = c.clone();
        match c.role {
            Role::PrivacyUnit => c.source = Some(unit_name.clone()),
            _ if c.source.is_some() => {
                // Read the CDM's column of that name directly, or NULL when the CDM has none.
                let cdm = is_cdm_column(&policy.name, &c.name);
                c.source = None;
                if matches!(c.generalize, Some(Generalize::Year) | Some(Generalize::Prefix(_))) {
                    c.generalize = None;
                }
                if !cdm {
                    c.nullable = true;
                }
            }
            _ => {}
        }
        columns.push(c);
    }
    TablePolicy { columns, ..policy.clone() }
}

/// The header columns an input policy does not read, in two lists: CDM columns secretum does
/// not keep, and columns that are not in the CDM (a site's additions). Both are dropped.
pub fn dropped(table: &str, header: &[String], read: &[String]) -> (Vec<String>, Vec<String>) {
    let mut cdm = Vec::new();
    let mut extra = Vec::new();
    for h in header {
        if read.contains(h) {
            continue;
        }
        if is_cdm_column(table, h) { cdm.push(h.clone()) } else { extra.push(h.clone()) }
    }
    (cdm, extra)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_specification_lists_the_tables_and_their_fields() {
        let person = &spec()["person"];
        assert_eq!(person[0].name, "person_id");
        assert!(person[0].required);
        let gender = person.iter().find(|f| f.name == "gender_concept_id").unwrap();
        assert_eq!(gender.fk_domain.as_deref(), Some("Gender"));
        assert!(spec().contains_key("condition_era"));
        assert!(is_cdm_column("visit_occurrence", "admitting_source_value"));
        assert!(!is_cdm_column("person", "nir"));
    }

    #[test]
    fn headers_are_lowercased_and_v53_names_renamed() {
        let header: Vec<String> = ["VISIT_OCCURRENCE_ID", " Person_Id ", "ADMITTING_SOURCE_VALUE"].map(String::from).to_vec();
        let (names, version) = normalize_header("visit_occurrence", &header, None);
        assert_eq!(names, ["visit_occurrence_id", "person_id", "admitted_from_source_value"]);
        assert_eq!(version, Some(CdmVersion::V53));
        let (names, version) = normalize_header("visit_occurrence", &header, Some(CdmVersion::V54));
        assert_eq!(names[2], "admitting_source_value", "a version given as 5.4 renames nothing");
        assert_eq!(version, Some(CdmVersion::V54));
    }
}
