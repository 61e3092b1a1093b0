//! Privacy-annotated table definitions: `schemas/*.toml` → typed [`TablePolicy`].
//!
//! Every column has a privacy role. Loading never stops at the first problem: it collects every
//! problem with its file, table and column, so a steward fixes a schema in one pass.
//!
//! Raw columns versus stored columns: an extract carries identifiers that are never stored.
//! The privacy unit (`person_id`) and generalized quasi-identifiers (`year_of_birth`) are
//! *derived* from a raw `source` column; identifiers are either pseudonymized in place
//! (`pseudonymize = true`, stored as a keyed hash) or dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::error::{Error, Result, SchemaProblem};

/// The schemas shipped with secretum (the OMOP CDM v5.4 clinical tables a study needs, and the
/// standardized vocabularies as public tables), copied into a warehouse at init.
pub const BUNDLED: &[(&str, &str)] = &[
    ("person.toml", include_str!("../../schemas/person.toml")),
    ("observation_period.toml", include_str!("../../schemas/observation_period.toml")),
    ("visit_occurrence.toml", include_str!("../../schemas/visit_occurrence.toml")),
    ("condition_occurrence.toml", include_str!("../../schemas/condition_occurrence.toml")),
    ("drug_exposure.toml", include_str!("../../schemas/drug_exposure.toml")),
    ("measurement.toml", include_str!("../../schemas/measurement.toml")),
    ("death.toml", include_str!("../../schemas/death.toml")),
    ("procedure_occurrence.toml", include_str!("../../schemas/procedure_occurrence.toml")),
    ("observation.toml", include_str!("../../schemas/observation.toml")),
    ("device_exposure.toml", include_str!("../../schemas/device_exposure.toml")),
    ("visit_detail.toml", include_str!("../../schemas/visit_detail.toml")),
    ("condition_era.toml", include_str!("../../schemas/condition_era.toml")),
    ("drug_era.toml", include_str!("../../schemas/drug_era.toml")),
    ("specimen.toml", include_str!("../../schemas/specimen.toml")),
    ("payer_plan_period.toml", include_str!("../../schemas/payer_plan_period.toml")),
    ("concept.toml", include_str!("../../schemas/concept.toml")),
    ("concept_ancestor.toml", include_str!("../../schemas/concept_ancestor.toml")),
    ("concept_relationship.toml", include_str!("../../schemas/concept_relationship.toml")),
    ("concept_synonym.toml", include_str!("../../schemas/concept_synonym.toml")),
    ("vocabulary.toml", include_str!("../../schemas/vocabulary.toml")),
    ("domain.toml", include_str!("../../schemas/domain.toml")),
    ("concept_class.toml", include_str!("../../schemas/concept_class.toml")),
    ("relationship.toml", include_str!("../../schemas/relationship.toml")),
    ("drug_strength.toml", include_str!("../../schemas/drug_strength.toml")),
    ("vocabularies/condition_concepts.txt", include_str!("../../schemas/vocabularies/condition_concepts.txt")),
    ("vocabularies/drug_concepts.txt", include_str!("../../schemas/vocabularies/drug_concepts.txt")),
    ("vocabularies/measurement_concepts.txt", include_str!("../../schemas/vocabularies/measurement_concepts.txt")),
    ("vocabularies/departments.txt", include_str!("../../schemas/vocabularies/departments.txt")),
];

/// The largest public domain a column may have (and the most public groups a query may release).
pub const MAX_DOMAIN: usize = 100_000;

/// Column types, named as in the OMOP CDM field-level specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// OMOP `integer`/`bigint`: stored as 64-bit (pseudonyms need the range).
    Integer,
    /// OMOP `float`: 64-bit IEEE.
    Float,
    /// OMOP `varchar(n)` (`None` for `varchar(MAX)`).
    Varchar(Option<usize>),
    /// OMOP `date`: days since the epoch.
    Date,
    /// OMOP `datetime`: microseconds since the epoch, no time zone.
    Datetime,
    /// A boolean (the per-patient BOOL_OR / BOOL_AND of a query; not an OMOP type).
    Boolean,
}

impl ColumnType {
    fn parse(s: &str) -> Option<ColumnType> {
        let t = s.trim().to_ascii_lowercase();
        Some(match t.as_str() {
            "integer" | "bigint" => ColumnType::Integer,
            "float" => ColumnType::Float,
            "date" => ColumnType::Date,
            "datetime" => ColumnType::Datetime,
            "boolean" => ColumnType::Boolean,
            "varchar" | "varchar(max)" => ColumnType::Varchar(None),
            _ => {
                let n = t.strip_prefix("varchar(")?.strip_suffix(')')?;
                ColumnType::Varchar(Some(n.parse().ok().filter(|n| *n > 0)?))
            }
        })
    }

    pub fn arrow(self) -> ArrowType {
        match self {
            ColumnType::Integer => ArrowType::Int64,
            ColumnType::Float => ArrowType::Float64,
            ColumnType::Varchar(_) => ArrowType::Utf8,
            ColumnType::Date => ArrowType::Date32,
            ColumnType::Datetime => ArrowType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::Boolean => ArrowType::Boolean,
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::Integer | ColumnType::Float)
    }

    pub fn name(self) -> String {
        match self {
            ColumnType::Integer => "integer".into(),
            ColumnType::Float => "float".into(),
            ColumnType::Varchar(Some(n)) => format!("varchar({n})"),
            ColumnType::Varchar(None) => "varchar(MAX)".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Datetime => "datetime".into(),
            ColumnType::Boolean => "boolean".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The patient pseudonym. Exactly one per table.
    PrivacyUnit,
    /// A direct identifier: pseudonymized (into the privacy unit, or in place) or dropped.
    Identifier,
    /// Stored only generalized.
    QuasiIdentifier,
    /// Ordinary data.
    Attribute,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::PrivacyUnit => "privacy_unit",
            Role::Identifier => "identifier",
            Role::QuasiIdentifier => "quasi_identifier",
            Role::Attribute => "attribute",
        }
    }
}

/// How a quasi-identifier is generalized at ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generalize {
    /// A date becomes its year (an integer column).
    Year,
    /// A string keeps its first `n` characters (postcode → département).
    Prefix(usize),
    /// A date is shifted by a per-patient keyed offset in `[-days, +days]`: intervals between one
    /// patient's dates are kept, calendar dates are not.
    ShiftDays(u32),
}

/// What ingest does with a value outside the column's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfBounds {
    /// Store it; queries clamp it to the bounds.
    #[default]
    Keep,
    /// The row is invalid.
    Reject,
}

/// A public value: what a domain lists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DomainValue {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for DomainValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainValue::Int(i) => write!(f, "{i}"),
            DomainValue::Str(s) => write!(f, "{s}"),
        }
    }
}

/// A declared public domain: every value a column may take, known without looking at data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// An explicit list (possibly loaded from a vocabulary file).
    Values(BTreeSet<DomainValue>),
    /// All integers in `lo..=hi`.
    Range(i64, i64),
    /// The concept ids of one OMOP domain (`Condition`, `Drug`, `Gender`, ...), as the loaded
    /// vocabulary's `concept` table lists them. Not checked at ingest (the vocabulary may come
    /// later, and a site's codes are its own); public once the vocabulary is loaded, see
    /// [`crate::vocabulary::resolve_domains`].
    Concepts(String),
}

impl Domain {
    pub fn contains_int(&self, v: i64) -> bool {
        match self {
            Domain::Values(set) => set.contains(&DomainValue::Int(v)),
            Domain::Range(lo, hi) => (*lo..=*hi).contains(&v),
            Domain::Concepts(_) => true,
        }
    }

    pub fn contains_str(&self, v: &str) -> bool {
        match self {
            Domain::Values(set) => set.contains(&DomainValue::Str(v.to_owned())),
            Domain::Range(..) | Domain::Concepts(_) => false,
        }
    }

    /// How many values it has (an unresolved concept domain counts as unbounded).
    pub fn len(&self) -> usize {
        match self {
            Domain::Values(set) => set.len(),
            Domain::Range(lo, hi) => (hi - lo + 1).max(0) as usize,
            Domain::Concepts(_) => usize::MAX,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value of the domain, in order.
    pub fn values(&self) -> Vec<DomainValue> {
        match self {
            Domain::Values(set) => set.iter().cloned().collect(),
            Domain::Range(lo, hi) => (*lo..=*hi).map(DomainValue::Int).collect(),
            Domain::Concepts(_) => Vec::new(),
        }
    }
}

/// Validation applied to an identifier's raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// French NIR: 13 characters (digits, or 2A/2B for Corsica) and a 2-digit key, 97 - (n mod 97).
    Nir,
}

/// One column and its privacy policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPolicy {
    pub name: String,
    pub ty: ColumnType,
    pub role: Role,
    pub nullable: bool,
    /// For derived columns: the raw column they are computed from.
    pub source: Option<String>,
    pub generalize: Option<Generalize>,
    /// For identifiers: stored as a keyed pseudonym (true) or dropped (false).
    pub pseudonymize: bool,
    pub check: Option<Check>,
    /// Numeric bounds, as f64 (dates as days since the epoch).
    pub bounds: Option<(f64, f64)>,
    pub on_out_of_bounds: OutOfBounds,
    pub domain: Option<Domain>,
    pub description: Option<String>,
}

impl ColumnPolicy {
    /// Is this column written to the stored Parquet?
    pub fn is_stored(&self) -> bool {
        match self.role {
            Role::PrivacyUnit | Role::Attribute => true,
            Role::QuasiIdentifier => true,
            Role::Identifier => self.pseudonymize,
        }
    }

    /// Is this column read from the raw extract (as opposed to derived from another one)?
    pub fn is_raw(&self) -> bool {
        self.source.is_none()
    }

    /// May this column's values ever be released, grouped on or passed to a function whose
    /// output is released? Privacy units and identifiers (even pseudonymized) never.
    pub fn is_releasable(&self) -> bool {
        matches!(self.role, Role::Attribute | Role::QuasiIdentifier)
    }

    /// How many values this column's public domain has, if it has one small enough to
    /// enumerate: a declared domain, or the bounds of an integer or date column.
    pub fn public_domain_size(&self) -> Option<usize> {
        if let Some(d) = &self.domain {
            return Some(d.len()).filter(|n| *n <= MAX_DOMAIN);
        }
        match (self.stored_type(), self.bounds) {
            (ColumnType::Integer | ColumnType::Date, Some((lo, hi))) => {
                let n = (hi.floor() - lo.ceil() + 1.0).max(0.0) as usize;
                Some(n).filter(|n| *n <= MAX_DOMAIN)
            }
            _ => None,
        }
    }

    /// The type this column has in the stored Parquet.
    pub fn stored_type(&self) -> ColumnType {
        match (self.role, &self.generalize) {
            (Role::PrivacyUnit, _) => ColumnType::Integer,
            (Role::Identifier, _) if self.pseudonymize => ColumnType::Integer,
            _ => self.ty,
        }
    }
}

/// One table and its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TablePolicy {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    /// How many rows one patient may contribute to a query (enforced by the engine).
    pub max_rows_per_unit: u32,
    /// How many groups one patient may contribute to (schema default; a query may tighten it).
    pub max_groups_per_unit: u32,
    /// Public reference data (the OMOP vocabularies): no patient in it, no privacy unit, readable
    /// row by row and joinable at no privacy cost.
    pub public: bool,
    pub columns: Vec<ColumnPolicy>,
}

impl TablePolicy {
    pub fn column(&self, name: &str) -> Option<&ColumnPolicy> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn privacy_unit(&self) -> &ColumnPolicy {
        // Validated at load: exactly one privacy unit per table.
        self.columns.iter().find(|c| c.role == Role::PrivacyUnit).unwrap_or(&self.columns[0])
    }

    /// Columns of the raw extract, in schema order.
    pub fn raw_columns(&self) -> impl Iterator<Item = &ColumnPolicy> {
        self.columns.iter().filter(|c| c.is_raw())
    }

    /// Columns of the stored Parquet, in schema order.
    pub fn stored_columns(&self) -> impl Iterator<Item = &ColumnPolicy> {
        self.columns.iter().filter(|c| c.is_stored())
    }

    /// The Arrow schema of the stored Parquet files.
    pub fn stored_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self.stored_columns().map(|c| Field::new(&c.name, c.stored_type().arrow(), c.nullable)).collect();
        std::sync::Arc::new(Schema::new(fields))
    }
}

/// All table policies of a warehouse.
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    pub tables: BTreeMap<String, TablePolicy>,
}

impl Schemas {
    pub fn get(&self, table: &str) -> Result<&TablePolicy> {
        self.tables.get(table).ok_or_else(|| Error::not_found("table", format!("`{table}`")))
    }

    /// The schemas shipped with secretum.
    pub fn bundled() -> Result<Schemas> {
        let vocab: BTreeMap<&str, &str> = BUNDLED.iter().copied().filter(|(n, _)| !n.ends_with(".toml")).collect();
        let mut problems = Vec::new();
        let mut tables = BTreeMap::new();
        for (name, text) in BUNDLED.iter().filter(|(n, _)| n.ends_with(".toml")) {
            let read_vocab = |p: &str| vocab.get(p).map(|s| s.to_string()).ok_or_else(|| Problem::from("file not found"));
            match parse_table(name, text, &read_vocab) {
                Ok(t) => {
                    tables.insert(t.name.clone(), t);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() { Ok(Schemas { tables }) } else { Err(Error::Schema(problems)) }
    }

    /// Write the bundled schemas into `dir` (at init).
    pub fn write_bundled(dir: &Path) -> Result<()> {
        for (name, text) in BUNDLED {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Load every `*.toml` in `dir`, reporting every problem of every file.
    pub fn load_dir(dir: &Path) -> Result<Schemas> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Schema(vec![SchemaProblem {
                file: dir.display().to_string(),
                table: None,
                column: None,
                problem: "no *.toml table definitions in this directory".into(),
            }]));
        }
        let mut problems = Vec::new();
        let mut tables: BTreeMap<String, TablePolicy> = BTreeMap::new();
        for file in files {
            let shown = file.display().to_string();
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(SchemaProblem { file: shown, table: None, column: None, problem: e.to_string() });
                    continue;
                }
            };
            let read_vocab = |p: &str| std::fs::read_to_string(dir.join(p)).map_err(|e| Problem(e.to_string()));
            match parse_table(&shown, &text, &read_vocab) {
                Ok(mut t) => {
                    t.file = file.clone();
                    if let Some(other) = tables.get(&t.name) {
                        problems.push(SchemaProblem {
                            file: shown,
                            table: Some(t.name.clone()),
                            column: None,
                            problem: format!("table already defined in {}", other.file.display()),
                        });
                    } else {
                        tables.insert(t.name.clone(), t);
                    }
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() { Ok(Schemas { tables }) } else { Err(Error::Schema(problems)) }
    }
}

// ---- TOML representation -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableToml {
    table: String,
    description: Option<String>,
    max_rows_per_unit: Option<i64>,
    max_groups_per_unit: Option<i64>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    columns: Vec<ColumnToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnToml {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    role: String,
    #[serde(default)]
    nullable: bool,
    source: Option<String>,
    generalize: Option<toml::Value>,
    #[serde(default)]
    pseudonymize: bool,
    check: Option<Check>,
    bounds: Option<Vec<toml::Value>>,
    #[serde(default)]
    on_out_of_bounds: OutOfBounds,
    domain: Option<toml::Value>,
    description: Option<String>,
}

/// Parse and validate one table definition. `read_vocab` reads a vocabulary file named
/// relative to the schema directory.
fn parse_table(
    file: &str,
    text: &str,
    read_vocab: &dyn Fn(&str) -> std::result::Result<String, Problem>,
) -> std::result::Result<TablePolicy, Vec<SchemaProblem>> {
    let raw: TableToml = toml::from_str(text).map_err(|e| {
        vec![SchemaProblem {
            file: file.into(),
            table: None,
            column: None,
            problem: format!("not a valid table definition: {}", e.message()),
        }]
    })?;
    let mut problems = Vec::new();
    let table = raw.table.clone();
    let mut push = |column: Option<&str>, problem: String| {
        problems.push(SchemaProblem { file: file.into(), table: Some(table.clone()), column: column.map(str::to_owned), problem });
    };
    if !is_identifier(&raw.table) {
        push(None, "table name must be lowercase letters, digits and underscores".into());
    }
    let max_rows_per_unit = match raw.max_rows_per_unit {
        None | Some(_) if raw.public => {
            if raw.max_rows_per_unit.is_some() {
                push(None, "a public table has no patients: max_rows_per_unit does not apply".into());
            }
            1
        }
        Some(n) if (1..=1_000_000).contains(&n) => n as u32,
        Some(n) => {
            push(None, format!("max_rows_per_unit must be between 1 and 1000000, not {n}"));
            1
        }
        None => {
            push(None, "max_rows_per_unit is required (how many rows one patient may contribute)".into());
            1
        }
    };
    let max_groups_per_unit = match raw.max_groups_per_unit {
        None => max_rows_per_unit,
        Some(n) if n >= 1 && n <= max_rows_per_unit as i64 => n as u32,
        Some(n) => {
            push(None, format!("max_groups_per_unit must be between 1 and max_rows_per_unit ({max_rows_per_unit}), not {n}"));
            1
        }
    };

    let mut seen = BTreeSet::new();
    let mut columns = Vec::new();
    for c in &raw.columns {
        let col = Some(c.name.as_str());
        if !seen.insert(c.name.clone()) {
            push(col, "duplicate column".into());
            continue;
        }
        if !is_identifier(&c.name) {
            push(col, "column name must be lowercase letters, digits and underscores".into());
        }
        let Some(ty) = ColumnType::parse(&c.ty) else {
            push(col, format!("unknown type `{}` (expected integer, bigint, float, varchar(n), date or datetime)", c.ty));
            continue;
        };
        let role = match c.role.as_str() {
            "privacy_unit" => Role::PrivacyUnit,
            "identifier" => Role::Identifier,
            "quasi_identifier" => Role::QuasiIdentifier,
            "attribute" => Role::Attribute,
            other => {
                push(col, format!("unknown role `{other}` (expected privacy_unit, identifier, quasi_identifier or attribute)"));
                continue;
            }
        };
        let generalize = match &c.generalize {
            None => None,
            Some(toml::Value::String(s)) if s == "year" => Some(Generalize::Year),
            Some(toml::Value::Table(t)) if t.len() == 1 && t.contains_key("prefix") => match t["prefix"].as_integer() {
                Some(n) if n >= 1 => Some(Generalize::Prefix(n as usize)),
                _ => {
                    push(col, "generalize.prefix must be a positive integer".into());
                    None
                }
            },
            Some(toml::Value::Table(t)) if t.len() == 1 && t.contains_key("shift_days") => match t["shift_days"].as_integer() {
                Some(n) if (1..=3650).contains(&n) => Some(Generalize::ShiftDays(n as u32)),
                _ => {
                    push(col, "generalize.shift_days must be between 1 and 3650".into());
                    None
                }
            },
            Some(other) => {
                push(col, format!("unknown generalization {other} (expected \"year\", {{ prefix = n }} or {{ shift_days = n }})"));
                None
            }
        };
        let bounds = c.bounds.as_ref().and_then(|b| {
            let parsed = parse_bounds(ty, b);
            match parsed {
                Ok(b) => Some(b),
                Err(e) => {
                    push(col, e.0);
                    None
                }
            }
        });
        if c.on_out_of_bounds == OutOfBounds::Reject && bounds.is_none() {
            push(col, "on_out_of_bounds = \"reject\" needs bounds".into());
        }
        let domain = c.domain.as_ref().and_then(|d| match parse_domain(ty, d, read_vocab) {
            Ok(d) => Some(d),
            Err(e) => {
                push(col, e.0);
                None
            }
        });
        // Role-specific rules.
        match role {
            Role::PrivacyUnit => {
                if ty != ColumnType::Integer {
                    push(col, "the privacy unit holds a keyed pseudonym: its type must be integer".into());
                }
                if c.nullable {
                    push(col, "the privacy unit cannot be nullable".into());
                }
                if bounds.is_some() || domain.is_some() || generalize.is_some() {
                    push(col, "the privacy unit cannot have bounds, a domain or a generalization".into());
                }
            }
            Role::Identifier => {
                if bounds.is_some() || domain.is_some() {
                    push(col, "an identifier cannot have bounds or a public domain".into());
                }
                if generalize.is_some() || c.source.is_some() {
                    push(col, "an identifier is pseudonymized or dropped: generalize a quasi_identifier derived from it instead".into());
                }
            }
            Role::QuasiIdentifier | Role::Attribute => {
                if c.pseudonymize {
                    push(col, "only identifiers can be pseudonymized".into());
                }
                if role == Role::QuasiIdentifier && generalize.is_none() {
                    push(col, "a quasi_identifier must declare how it is generalized (generalize = ...)".into());
                }
            }
        }
        if role != Role::Identifier && c.check.is_some() {
            push(col, "check applies only to identifiers".into());
        }
        if domain.is_some() && matches!(ty, ColumnType::Float | ColumnType::Date | ColumnType::Datetime) {
            push(col, format!("a public domain cannot be declared on a {} column (use bounds)", ty.name()));
        }
        match (&generalize, ty) {
            (Some(Generalize::Year), t) if t != ColumnType::Integer => push(col, "generalize = \"year\" produces an integer column".into()),
            (Some(Generalize::Prefix(_)), ColumnType::Varchar(_)) => {}
            (Some(Generalize::Prefix(_)), _) => push(col, "generalize.prefix applies to varchar columns".into()),
            (Some(Generalize::ShiftDays(_)), ColumnType::Date) => {}
            (Some(Generalize::ShiftDays(_)), _) => push(col, "generalize.shift_days applies to date columns".into()),
            _ => {}
        }
        columns.push(ColumnPolicy {
            name: c.name.clone(),
            ty,
            role,
            nullable: c.nullable,
            source: c.source.clone(),
            generalize,
            pseudonymize: c.pseudonymize,
            check: c.check,
            bounds,
            on_out_of_bounds: c.on_out_of_bounds,
            domain,
            description: c.description.clone(),
        });
    }

    // Table-level rules.
    let units: Vec<&ColumnPolicy> = columns.iter().filter(|c| c.role == Role::PrivacyUnit).collect();
    if raw.public {
        for c in columns.iter().filter(|c| c.role != Role::Attribute) {
            push(Some(&c.name), format!("a public table holds no patient data: its columns are attributes, not {}", c.role.name()));
        }
    } else {
        match units.len() {
            0 => push(None, "no privacy_unit column: every patient table names the column that holds the patient pseudonym".into()),
            1 => {}
            n => push(None, format!("{n} privacy_unit columns: exactly one is allowed")),
        }
    }
    for c in &columns {
        let col = Some(c.name.as_str());
        match (&c.source, c.role) {
            (Some(src), _) => match columns.iter().find(|o| &o.name == src) {
                None => push(col, format!("source column `{src}` is not declared")),
                Some(o) if o.role != Role::Identifier => {
                    push(col, format!("source column `{src}` must be an identifier (it is never stored)"))
                }
                Some(o) if o.pseudonymize => {
                    push(col, format!("source column `{src}` is pseudonymized in place; derive from a dropped identifier"))
                }
                Some(o) => {
                    if c.generalize == Some(Generalize::Year) && !matches!(o.ty, ColumnType::Date | ColumnType::Datetime) {
                        push(col, format!("generalize = \"year\" needs a date source, `{src}` is {}", o.ty.name()));
                    }
                    if matches!(c.generalize, Some(Generalize::Prefix(_))) && !matches!(o.ty, ColumnType::Varchar(_)) {
                        push(col, format!("generalize.prefix needs a varchar source, `{src}` is {}", o.ty.name()));
                    }
                }
            },
            (None, Role::PrivacyUnit) => push(col, "the privacy unit needs `source`: the raw identifier it is pseudonymized from".into()),
            (None, Role::QuasiIdentifier) if matches!(c.generalize, Some(Generalize::Year) | Some(Generalize::Prefix(_))) => {
                push(col, "this generalization needs `source`: the raw column it is computed from".into())
            }
            _ => {}
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(TablePolicy {
        name: raw.table,
        description: raw.description,
        file: PathBuf::from(file),
        max_rows_per_unit,
        max_groups_per_unit,
        public: raw.public,
        columns,
    })
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What is wrong with one field of a schema (becomes a [`SchemaProblem`]'s text).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem(String);

impl From<String> for Problem {
    fn from(s: String) -> Problem {
        Problem(s)
    }
}

impl From<&str> for Problem {
    fn from(s: &str) -> Problem {
        Problem(s.to_owned())
    }
}

fn parse_bounds(ty: ColumnType, b: &[toml::Value]) -> std::result::Result<(f64, f64), Problem> {
    if b.len() != 2 {
        return Err(format!("bounds must be [lo, hi], got {} values", b.len()).into());
    }
    let one = |v: &toml::Value| -> std::result::Result<f64, Problem> {
        match (ty, v) {
            (ColumnType::Integer, toml::Value::Integer(i)) => Ok(*i as f64),
            (ColumnType::Float, toml::Value::Integer(i)) => Ok(*i as f64),
            (ColumnType::Float, toml::Value::Float(f)) if f.is_finite() => Ok(*f),
            (ColumnType::Date, toml::Value::String(s)) => {
                parse_date(s).map(|d| d as f64).ok_or_else(|| format!("bound `{s}` is not a date (YYYY-MM-DD)").into())
            }
            (ColumnType::Date, toml::Value::Datetime(d)) => {
                parse_date(&d.to_string()).map(|d| d as f64).ok_or_else(|| format!("bound `{d}` is not a date (YYYY-MM-DD)").into())
            }
            (ColumnType::Varchar(_), _) => Err("bounds apply to numeric and date columns, not varchar".into()),
            (ColumnType::Datetime, _) => Err("bounds are not supported on datetime columns".into()),
            (_, v) => Err(format!("bound {v} does not match the column type {}", ty.name()).into()),
        }
    };
    let (lo, hi) = (one(&b[0])?, one(&b[1])?);
    if lo > hi {
        return Err(format!("bounds lo > hi ({} > {})", b[0], b[1]).into());
    }
    Ok((lo, hi))
}

fn parse_domain(
    ty: ColumnType,
    d: &toml::Value,
    read_vocab: &dyn Fn(&str) -> std::result::Result<String, Problem>,
) -> std::result::Result<Domain, Problem> {
    let value = |v: &toml::Value| -> std::result::Result<DomainValue, Problem> {
        match (ty, v) {
            (ColumnType::Integer, toml::Value::Integer(i)) => Ok(DomainValue::Int(*i)),
            (ColumnType::Varchar(_), toml::Value::String(s)) => Ok(DomainValue::Str(s.clone())),
            (_, v) => Err(format!("domain value {v} does not match the column type {}", ty.name()).into()),
        }
    };
    match d {
        toml::Value::Array(items) => {
            if items.is_empty() {
                return Err("domain is empty".into());
            }
            let mut set = BTreeSet::new();
            for v in items {
                if !set.insert(value(v)?) {
                    return Err(format!("domain lists {v} twice").into());
                }
            }
            Ok(Domain::Values(set))
        }
        toml::Value::Table(t) if t.len() == 1 && t.contains_key("range") => {
            let r = t["range"].as_array().filter(|r| r.len() == 2).ok_or("domain.range must be [lo, hi]")?;
            let (Some(lo), Some(hi)) = (r[0].as_integer(), r[1].as_integer()) else {
                return Err("domain.range bounds must be integers".into());
            };
            if ty != ColumnType::Integer {
                return Err("domain.range applies to integer columns".into());
            }
            if lo > hi {
                return Err(format!("domain.range lo > hi ({lo} > {hi})").into());
            }
            if hi - lo >= 1_000_000 {
                return Err("domain.range has more than 1000000 values".into());
            }
            Ok(Domain::Range(lo, hi))
        }
        toml::Value::Table(t) if t.len() == 1 && t.contains_key("concepts") => {
            let d =
                t["concepts"].as_str().filter(|d| !d.is_empty()).ok_or("domain.concepts must name an OMOP domain (\"Condition\", ...)")?;
            if ty != ColumnType::Integer {
                return Err("domain.concepts applies to integer (concept id) columns".into());
            }
            Ok(Domain::Concepts(d.to_owned()))
        }
        toml::Value::Table(t) if t.len() == 1 && t.contains_key("vocabulary") => {
            let path = t["vocabulary"].as_str().ok_or("domain.vocabulary must be a file name")?;
            if path.contains("..") || path.starts_with('/') {
                return Err(format!("vocabulary `{path}` must be a path inside the schema directory").into());
            }
            let text = read_vocab(path).map_err(|e| format!("vocabulary `{path}`: {}", e.0))?;
            let mut set = BTreeSet::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let code = line.split(['\t', ' ']).next().unwrap_or(line);
                let v = match ty {
                    ColumnType::Integer => DomainValue::Int(
                        code.parse().map_err(|_| Problem(format!("vocabulary `{path}` line {}: `{code}` is not an integer", i + 1)))?,
                    ),
                    ColumnType::Varchar(_) => DomainValue::Str(code.to_owned()),
                    _ => return Err(format!("a public domain cannot be declared on a {} column", ty.name()).into()),
                };
                set.insert(v);
            }
            if set.is_empty() {
                return Err(format!("vocabulary `{path}` lists no values").into());
            }
            Ok(Domain::Values(set))
        }
        other => Err(format!("domain must be a list, {{ range = [lo, hi] }} or {{ vocabulary = \"file\" }}, not {other}").into()),
    }
}

/// Days since 1970-01-01 for a `YYYY-MM-DD` date, or None.
pub fn parse_date(s: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((d - epoch).num_days() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<TablePolicy, Vec<SchemaProblem>> {
        parse_table("t.toml", text, &|_| Err("no vocabularies in this test".into()))
    }

    #[test]
    fn bundled_schemas_load() {
        let s = Schemas::bundled().unwrap();
        // The 15 patient tables of the CDM we hold, and the 9 vocabulary tables (public).
        assert_eq!(s.tables.len(), 24);
        assert_eq!(s.tables.values().filter(|t| t.public).count(), 9);
        let person = s.get("person").unwrap();
        assert_eq!(person.privacy_unit().name, "person_id");
        assert!(!person.column("nir").unwrap().is_stored());
        assert_eq!(person.column("year_of_birth").unwrap().generalize, Some(Generalize::Year));
        let cond = s.get("condition_occurrence").unwrap();
        // A concept column's domain is the standard concepts of its CDM domain, resolved from the
        // loaded vocabulary when a query groups by it.
        assert_eq!(cond.column("condition_concept_id").unwrap().domain, Some(Domain::Concepts("Condition".into())));
    }

    #[test]
    fn column_types_parse() {
        assert_eq!(ColumnType::parse("varchar(50)"), Some(ColumnType::Varchar(Some(50))));
        assert_eq!(ColumnType::parse("VARCHAR(MAX)"), Some(ColumnType::Varchar(None)));
        assert_eq!(ColumnType::parse("Integer"), Some(ColumnType::Integer));
        assert_eq!(ColumnType::parse("varchar(0)"), None);
        assert_eq!(ColumnType::parse("blob"), None);
    }

    const UNIT: &str = r#"
[[columns]]
name = "person_id"
type = "integer"
role = "privacy_unit"
source = "nir"
[[columns]]
name = "nir"
type = "varchar(15)"
role = "identifier"
"#;

    #[test]
    fn every_problem_is_reported_with_its_column() {
        let text = format!(
            r#"table = "t"
max_rows_per_unit = 3
{UNIT}
[[columns]]
name = "a"
type = "blob"
role = "attribute"
[[columns]]
name = "b"
type = "integer"
role = "attribute"
bounds = [10, 1]
[[columns]]
name = "c"
type = "float"
role = "attribute"
domain = [1, 2]
[[columns]]
name = "b"
type = "integer"
role = "attribute"
"#
        );
        let problems = parse(&text).unwrap_err();
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 4, "{shown:#?}");
        assert!(shown[0].contains("column a: unknown type `blob`"), "{shown:#?}");
        assert!(shown[1].contains("column b: bounds lo > hi"), "{shown:#?}");
        assert!(shown[2].contains("column c:") && shown[2].contains("domain"), "{shown:#?}");
        assert!(shown[3].contains("column b: duplicate column"), "{shown:#?}");
        assert!(shown.iter().all(|s| s.starts_with("t.toml: table t: ")));
    }

    #[test]
    fn a_table_needs_exactly_one_privacy_unit() {
        let none = parse("table = \"t\"\nmax_rows_per_unit = 1\n[[columns]]\nname = \"x\"\ntype = \"integer\"\nrole = \"attribute\"\n")
            .unwrap_err();
        assert!(none[0].problem.contains("no privacy_unit"), "{none:?}");
        let two = parse(&format!(
            "table = \"t\"\nmax_rows_per_unit = 1\n{UNIT}\n[[columns]]\nname = \"p2\"\ntype = \"integer\"\nrole = \"privacy_unit\"\nsource = \"nir\"\n"
        ))
        .unwrap_err();
        assert!(two.iter().any(|p| p.problem.contains("2 privacy_unit columns")), "{two:?}");
    }

    #[test]
    fn rules_on_roles_and_sources() {
        let text = format!(
            r#"table = "t"
{UNIT}
[[columns]]
name = "yob"
type = "integer"
role = "quasi_identifier"
source = "missing"
generalize = "year"
[[columns]]
name = "q"
type = "varchar(2)"
role = "quasi_identifier"
[[columns]]
name = "r"
type = "integer"
role = "boss"
"#
        );
        let problems = parse(&text).unwrap_err();
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(shown.iter().any(|s| s.contains("max_rows_per_unit is required")), "{shown:#?}");
        assert!(shown.iter().any(|s| s.contains("column r: unknown role `boss`")), "{shown:#?}");
        assert!(shown.iter().any(|s| s.contains("column q: a quasi_identifier must declare")), "{shown:#?}");
        assert!(shown.iter().any(|s| s.contains("column yob: source column `missing` is not declared")), "{shown:#?}");
    }

    #[test]
    fn malformed_toml_is_one_problem_naming_the_file() {
        let problems = parse("table = ").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].to_string().starts_with("t.toml: not a valid table definition"));
    }

    #[test]
    fn domains_and_bounds_parse() {
        let text = format!(
            r#"table = "t"
max_rows_per_unit = 2
{UNIT}
[[columns]]
name = "d"
type = "date"
role = "attribute"
bounds = ["2000-01-01", "2001-01-01"]
[[columns]]
name = "k"
type = "integer"
role = "attribute"
domain = {{ range = [1, 5] }}
[[columns]]
name = "s"
type = "varchar(1)"
role = "attribute"
domain = ["M", "F"]
"#
        );
        let t = parse(&text).unwrap();
        assert_eq!(t.column("d").unwrap().bounds, Some((10957.0, 11323.0)));
        assert_eq!(t.column("k").unwrap().domain.as_ref().unwrap().len(), 5);
        assert!(t.column("s").unwrap().domain.as_ref().unwrap().contains_str("F"));
        let names: Vec<&str> = t.stored_columns().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["person_id", "d", "k", "s"]);
    }
}
