//! Deterministic synthetic raw extracts, shaped like a French hospital's OMOP extraction.
//!
//! Every patient is generated from its own random stream (seeded by the run's seed and the
//! patient's index), so the output depends only on `(patients, seed)` and is written in one
//! streaming pass: memory stays constant whatever the number of patients.
//!
//! The raw files carry what a real extract would and the warehouse must never store: a valid
//! NIR (with its control key), names, a phone number, the exact birth date and the postcode.
//! The shapes are plausible, not clinical truth: an age pyramid, visits increasing with age,
//! ICD-10 conditions with age-dependent prevalences (type 2 diabetes E11, hypertension I10, ...),
//! the drugs that treat them (ATC codes), lab results with units and reference ranges, deaths.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, IoContext, Result};
use crate::pseudonym::nir_key;

/// The tables written, one `<table>.csv` each.
pub const TABLES: [&str; 7] =
    ["person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure", "measurement", "death"];

/// The day the synthetic extract was taken: nothing happens after it.
fn extract_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 12, 31).expect("valid date")
}

/// A condition the generator knows: ICD-10 code, standard concept, and prevalence by age and sex.
struct Condition {
    icd10: &'static str,
    concept: i64,
    /// Probability of having it at all, as a function of age (years) and sex (true = female).
    prevalence: fn(f64, bool) -> f64,
    /// Drugs prescribed for it: (ATC code, concept, probability of being treated).
    drugs: &'static [(&'static str, i64, f64)],
}

fn ramp(age: f64, from: f64, to: f64, max: f64) -> f64 {
    if age <= from {
        0.0
    } else if age >= to {
        max
    } else {
        max * (age - from) / (to - from)
    }
}

const CONDITIONS: &[Condition] = &[
    Condition {
        icd10: "E11.9",
        concept: 201826,
        prevalence: |a, _| ramp(a, 25.0, 75.0, 0.17),
        drugs: &[("A10BA02", 1503297, 0.85), ("A10AE04", 1502905, 0.2)],
    },
    Condition {
        icd10: "I10",
        concept: 320128,
        prevalence: |a, _| ramp(a, 25.0, 80.0, 0.55),
        drugs: &[("C09AA05", 1334456, 0.6), ("C07AB07", 1338005, 0.3)],
    },
    Condition { icd10: "E78.5", concept: 432867, prevalence: |a, _| ramp(a, 30.0, 70.0, 0.3), drugs: &[("C10AA05", 1545958, 0.7)] },
    Condition { icd10: "J45.9", concept: 317009, prevalence: |_, _| 0.07, drugs: &[("R03AC02", 1154343, 0.9)] },
    Condition { icd10: "I48.9", concept: 313217, prevalence: |a, _| ramp(a, 50.0, 90.0, 0.12), drugs: &[("B01AF01", 40241331, 0.8)] },
    Condition { icd10: "N18.3", concept: 46271022, prevalence: |a, _| ramp(a, 45.0, 90.0, 0.2), drugs: &[] },
    Condition {
        icd10: "F32.9",
        concept: 440383,
        prevalence: |a, f| {
            if a < 15.0 {
                0.01
            } else if f {
                0.1
            } else {
                0.05
            }
        },
        drugs: &[("N06AB06", 739138, 0.6)],
    },
    Condition { icd10: "J44.9", concept: 255573, prevalence: |a, _| ramp(a, 40.0, 80.0, 0.08), drugs: &[("R03AC02", 1154343, 0.7)] },
    Condition {
        icd10: "I21.9",
        concept: 4329847,
        prevalence: |a, f| ramp(a, 40.0, 85.0, if f { 0.04 } else { 0.08 }),
        drugs: &[("B01AC06", 1112807, 0.95)],
    },
    Condition { icd10: "C50.9", concept: 4112853, prevalence: |a, f| if f { ramp(a, 30.0, 75.0, 0.06) } else { 0.0 }, drugs: &[] },
    Condition { icd10: "I63.9", concept: 443454, prevalence: |a, _| ramp(a, 50.0, 90.0, 0.06), drugs: &[("B01AC06", 1112807, 0.8)] },
    Condition { icd10: "E66.9", concept: 433736, prevalence: |a, _| ramp(a, 10.0, 60.0, 0.17), drugs: &[] },
    Condition { icd10: "M54.5", concept: 194133, prevalence: |a, _| ramp(a, 18.0, 50.0, 0.12), drugs: &[("N02BE01", 1125315, 0.8)] },
    Condition { icd10: "J18.9", concept: 255848, prevalence: |a, _| if !(5.0..=70.0).contains(&a) { 0.06 } else { 0.02 }, drugs: &[] },
];

const FIRST_F: &[&str] = &[
    "Louise",
    "Jade",
    "Emma",
    "Alice",
    "Chloé",
    "Camille",
    "Léa",
    "Manon",
    "Inès",
    "Juliette",
    "Marie",
    "Nathalie",
    "Isabelle",
    "Sylvie",
    "Catherine",
    "Françoise",
    "Monique",
    "Jacqueline",
    "Sophie",
    "Sandrine",
];
const FIRST_M: &[&str] = &[
    "Gabriel",
    "Raphaël",
    "Léo",
    "Louis",
    "Arthur",
    "Jules",
    "Hugo",
    "Lucas",
    "Nathan",
    "Thomas",
    "Jean",
    "Michel",
    "Philippe",
    "Alain",
    "Patrick",
    "Nicolas",
    "Christophe",
    "Pierre",
    "Bernard",
    "Laurent",
];
const LAST: &[&str] = &[
    "Martin",
    "Bernard",
    "Thomas",
    "Petit",
    "Robert",
    "Richard",
    "Durand",
    "Dubois",
    "Moreau",
    "Laurent",
    "Simon",
    "Michel",
    "Lefebvre",
    "Leroy",
    "Roux",
    "David",
    "Bertrand",
    "Morel",
    "Fournier",
    "Girard",
    "Bonnet",
    "Dupont",
    "Lambert",
    "Fontaine",
    "Rousseau",
    "Vincent",
    "Muller",
    "Lefèvre",
    "Faure",
    "André",
    "Mercier",
    "Blanc",
    "Guérin",
    "Boyer",
    "Garnier",
    "Chevalier",
    "François",
    "Legrand",
    "Gauthier",
    "Garcia",
];
/// Populous départements are drawn more often.
const BIG_DEPARTMENTS: &[u32] = &[75, 13, 59, 69, 92, 93, 33, 94, 31, 44, 62, 78, 77, 91, 6, 67, 76, 34, 38, 95];

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    pub files: Vec<(String, PathBuf, u64)>,
}

struct Out {
    name: &'static str,
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
    rows: u64,
}

impl Out {
    fn create(dir: &Path, name: &'static str, header: &[&str]) -> Result<Out> {
        let path = dir.join(format!("{name}.csv"));
        let file = File::create(&path).at(&path)?;
        let mut writer = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file));
        writer.write_record(header).map_err(|e| csv_err(&path, e))?;
        Ok(Out { name, path, writer, rows: 0 })
    }

    fn row(&mut self, fields: &[&str]) -> Result<()> {
        self.rows += 1;
        self.writer.write_record(fields).map_err(|e| csv_err(&self.path, e))
    }
}

fn csv_err(path: &Path, e: csv::Error) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

fn normal(rng: &mut StdRng, mean: f64, sd: f64) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.r#gen();
    mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn date_between(rng: &mut StdRng, from: NaiveDate, to: NaiveDate) -> NaiveDate {
    let span = (to - from).num_days().max(0);
    from + chrono::Duration::days(rng.gen_range(0..=span))
}

fn fmt_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Write `<out>/<table>.csv` for every table. `progress` is called with the patients done so far.
pub fn generate(patients: u64, seed: u64, out: &Path, progress: Option<&dyn Fn(u64)>) -> Result<GenerateReport> {
    std::fs::create_dir_all(out).at(out)?;
    let mut person = Out::create(
        out,
        "person",
        &[
            "nir",
            "first_name",
            "last_name",
            "phone",
            "birth_date",
            "postcode",
            "gender_concept_id",
            "gender_source_value",
            "race_concept_id",
            "ethnicity_concept_id",
        ],
    )?;
    let mut obs = Out::create(
        out,
        "observation_period",
        &["observation_period_id", "nir", "observation_period_start_date", "observation_period_end_date", "period_type_concept_id"],
    )?;
    let mut visit = Out::create(
        out,
        "visit_occurrence",
        &["visit_occurrence_id", "nir", "visit_concept_id", "visit_start_date", "visit_end_date", "visit_type_concept_id"],
    )?;
    let mut cond = Out::create(
        out,
        "condition_occurrence",
        &[
            "condition_occurrence_id",
            "nir",
            "condition_concept_id",
            "condition_start_date",
            "condition_end_date",
            "condition_type_concept_id",
            "visit_occurrence_id",
            "condition_source_value",
        ],
    )?;
    let mut drug = Out::create(
        out,
        "drug_exposure",
        &[
            "drug_exposure_id",
            "nir",
            "drug_concept_id",
            "drug_exposure_start_date",
            "drug_exposure_end_date",
            "drug_type_concept_id",
            "quantity",
            "days_supply",
            "visit_occurrence_id",
            "drug_source_value",
        ],
    )?;
    let mut meas = Out::create(
        out,
        "measurement",
        &[
            "measurement_id",
            "nir",
            "measurement_concept_id",
            "measurement_date",
            "measurement_type_concept_id",
            "value_as_number",
            "unit_source_value",
            "range_low",
            "range_high",
            "visit_occurrence_id",
            "measurement_source_value",
        ],
    )?;
    let mut death = Out::create(out, "death", &["nir", "death_date", "death_type_concept_id", "cause_concept_id", "cause_source_value"])?;

    let end = extract_date();
    let obs_floor = NaiveDate::from_ymd_opt(2005, 1, 1).expect("valid date");
    for i in 0..patients {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03));
        // Person: sex, age from a pyramid-shaped distribution, identity.
        let female = rng.gen_bool(0.515);
        const DECADE_WEIGHTS: [f64; 10] = [11.0, 12.0, 11.0, 12.0, 12.0, 13.0, 12.0, 10.0, 5.0, 2.0];
        let total: f64 = DECADE_WEIGHTS.iter().sum();
        let mut pick = rng.gen_range(0.0..total);
        let mut decade = 0;
        while decade < 9 && pick >= DECADE_WEIGHTS[decade] {
            pick -= DECADE_WEIGHTS[decade];
            decade += 1;
        }
        let age_days = (decade as i64 * 10 * 365) + rng.gen_range(0..3650);
        let birth = end - chrono::Duration::days(age_days);
        let age = age_days as f64 / 365.25;
        let dept = if rng.gen_bool(0.45) { BIG_DEPARTMENTS[rng.gen_range(0..BIG_DEPARTMENTS.len())] } else { rng.gen_range(1..=95) };
        let postcode = format!("{:02}{:03}", dept, rng.gen_range(0..100) * 10);
        // NIR: sex, yy, mm, département and commune of birth, order number, key. The last six
        // digits come from the patient's index, so NIRs are unique for up to 1,000,000 patients
        // per (sex, year, month, département).
        let birth_dept = if rng.gen_bool(0.1) { 99 } else { dept as u64 };
        let body = (if female { 2 } else { 1 }) * 1_000_000_000_000u64
            + (birth.year() as u64 % 100) * 10_000_000_000
            + birth.month() as u64 * 100_000_000
            + birth_dept * 1_000_000
            + (i % 1_000_000);
        let nir = format!("{body:013}{:02}", nir_key(body));
        let first = if female { FIRST_F[rng.gen_range(0..FIRST_F.len())] } else { FIRST_M[rng.gen_range(0..FIRST_M.len())] };
        let last = LAST[rng.gen_range(0..LAST.len())];
        let phone =
            if rng.gen_bool(0.8) { format!("0{}{:08}", rng.gen_range(1..=7), rng.gen_range(0..100_000_000u32)) } else { String::new() };
        person.row(&[
            &nir,
            first,
            last,
            &phone,
            &fmt_date(birth),
            &postcode,
            if female { "8532" } else { "8507" },
            if female { "F" } else { "M" },
            "0",
            "0",
        ])?;

        // Death, decided first: it ends the observation period. Risk grows steeply with age.
        let dies = rng.gen_bool((0.0002 * (0.085 * age).exp()).min(0.6));
        let obs_start = date_between(&mut rng, birth.max(obs_floor), (birth.max(obs_floor) + chrono::Duration::days(3 * 365)).min(end));
        let obs_end = if dies { date_between(&mut rng, obs_start, end) } else { end };
        let id_base = i * 1000;
        obs.row(&[&(id_base + 1).to_string(), &nir, &fmt_date(obs_start), &fmt_date(obs_end), "32817"])?;

        // Visits: more with age.
        let n_visits = (rng.gen_range(0.0..1.0f64) * (2.0 + age / 12.0) * 2.0).round() as u64 + 1;
        let mut visits: Vec<(u64, NaiveDate)> = Vec::new();
        for v in 0..n_visits.min(60) {
            let start = date_between(&mut rng, obs_start, obs_end);
            let kind = rng.gen_range(0..10);
            let (concept, stay) = match kind {
                0..=6 => ("9202", 0),
                7..=8 => ("9201", rng.gen_range(1..15)),
                _ => ("9203", rng.gen_range(0..2)),
            };
            let vid = id_base + 100 + v;
            let vend = (start + chrono::Duration::days(stay)).min(end);
            visit.row(&[&vid.to_string(), &nir, concept, &fmt_date(start), &fmt_date(vend), "32817"])?;
            visits.push((vid, start));
        }

        // Conditions, each recorded at one to three visits, with their treatments.
        let mut has = Vec::new();
        let (mut n_cond, mut n_drug, mut n_meas) = (0u64, 0u64, 0u64);
        for c in CONDITIONS {
            if !rng.gen_bool((c.prevalence)(age, female).clamp(0.0, 1.0)) {
                continue;
            }
            has.push(c.icd10);
            let records = rng.gen_range(1..=3);
            for _ in 0..records {
                let (vid, when) = visits[rng.gen_range(0..visits.len())];
                n_cond += 1;
                let cend = if rng.gen_bool(0.3) {
                    fmt_date((when + chrono::Duration::days(rng.gen_range(1..60))).min(end))
                } else {
                    String::new()
                };
                cond.row(&[
                    &(id_base + 300 + n_cond).to_string(),
                    &nir,
                    &c.concept.to_string(),
                    &fmt_date(when),
                    &cend,
                    "32817",
                    &vid.to_string(),
                    c.icd10,
                ])?;
            }
            for (atc, concept, p) in c.drugs {
                if !rng.gen_bool(*p) {
                    continue;
                }
                for _ in 0..rng.gen_range(1..=6) {
                    let (vid, when) = visits[rng.gen_range(0..visits.len())];
                    let supply = [30, 30, 30, 60, 90][rng.gen_range(0..5)];
                    n_drug += 1;
                    drug.row(&[
                        &(id_base + 500 + n_drug).to_string(),
                        &nir,
                        &concept.to_string(),
                        &fmt_date(when),
                        &fmt_date((when + chrono::Duration::days(supply)).min(end)),
                        "32817",
                        &(supply as f64).to_string(),
                        &supply.to_string(),
                        &vid.to_string(),
                        atc,
                    ])?;
                }
            }
        }

        // Lab results: HbA1c and glucose (more for diabetics), blood pressure, creatinine, LDL.
        let diabetic = has.contains(&"E11.9");
        let hypertensive = has.contains(&"I10");
        let ckd = has.contains(&"N18.3");
        let labs: [(&str, i64, &str, f64, f64, f64, f64, f64, f64); 5] = [
            ("4548-4", 3004410, "%", if diabetic { 7.6 } else { 5.4 }, if diabetic { 1.3 } else { 0.4 }, 4.0, 6.0, 3.5, 16.0),
            ("2345-7", 3004501, "mg/dL", if diabetic { 150.0 } else { 95.0 }, if diabetic { 40.0 } else { 12.0 }, 70.0, 100.0, 40.0, 450.0),
            ("8480-6", 3004249, "mmHg", if hypertensive { 145.0 } else { 122.0 }, 14.0, 90.0, 140.0, 70.0, 240.0),
            ("2160-0", 3016723, "µmol/L", if ckd { 180.0 } else { 80.0 }, if ckd { 50.0 } else { 15.0 }, 60.0, 110.0, 30.0, 600.0),
            ("13457-7", 3028437, "mg/dL", 125.0, 35.0, 0.0, 130.0, 30.0, 300.0),
        ];
        for (k, (loinc, concept, unit, mean, sd, lo, hi, min, max)) in labs.iter().enumerate() {
            let wanted = match k {
                0 | 1 if diabetic => rng.gen_range(2..=6),
                0 | 1 => u64::from(age > 40.0 && rng.gen_bool(0.3)),
                2 => u64::from(rng.gen_bool(0.6)) * rng.gen_range(1..=3),
                3 => u64::from(age > 50.0 && rng.gen_bool(0.5)) + u64::from(ckd) * 2,
                _ => u64::from(age > 40.0 && rng.gen_bool(0.3)),
            };
            for _ in 0..wanted {
                let (vid, when) = visits[rng.gen_range(0..visits.len())];
                let value = normal(&mut rng, *mean, *sd).clamp(*min, *max);
                n_meas += 1;
                meas.row(&[
                    &(id_base + 800 + n_meas).to_string(),
                    &nir,
                    &concept.to_string(),
                    &fmt_date(when),
                    "32856",
                    &format!("{value:.1}"),
                    unit,
                    &lo.to_string(),
                    &hi.to_string(),
                    &vid.to_string(),
                    loinc,
                ])?;
            }
        }

        if dies {
            let cause = CONDITIONS.iter().filter(|c| has.contains(&c.icd10)).next_back();
            let (cc, cs) = match cause {
                Some(c) => (c.concept.to_string(), c.icd10.to_owned()),
                None => (String::new(), String::new()),
            };
            death.row(&[&nir, &fmt_date(obs_end), "32817", &cc, &cs])?;
        }
        if let Some(p) = progress
            && ((i + 1) % 10_000 == 0 || i + 1 == patients)
        {
            p(i + 1);
        }
    }
    let mut files = Vec::new();
    for mut o in [person, obs, visit, cond, drug, meas, death] {
        o.writer.flush().at(&o.path)?;
        files.push((o.name.to_owned(), o.path.clone(), o.rows));
    }
    // The vocabulary the codes come from, as an Athena download.
    let vocabulary = out.join("vocabulary");
    for path in write_vocabulary(&vocabulary)? {
        let name = path.file_stem().map(|s| s.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        files.push((format!("vocabulary/{name}"), path, 0));
    }
    Ok(GenerateReport { files })
}

/// How `generate --format omop` writes the export.
#[derive(Debug, Clone, Copy)]
pub struct OmopOptions {
    pub version: crate::omop::CdmVersion,
    /// Upper-case headers and file names (`PERSON.csv`, `PERSON_ID`), as many ETL tools write them.
    pub upper_case: bool,
}

/// The same synthetic patients as [`generate`], written as an OMOP CDM export: `person_id` is the
/// hospital's internal patient number (1, 2, ...), no NIR, names, phone or postcode;
/// `year_of_birth`, `month_of_birth`, `day_of_birth` and `birth_datetime` as the CDM has them;
/// v5.3 or v5.4 column names; the vocabulary in `vocabulary/`.
pub fn generate_omop(patients: u64, seed: u64, out: &Path, options: OmopOptions, progress: Option<&dyn Fn(u64)>) -> Result<GenerateReport> {
    std::fs::create_dir_all(out).at(out)?;
    let raw = out.join(".extract");
    let _ = std::fs::remove_dir_all(&raw);
    let extract = generate(patients, seed, &raw, progress)?;
    let result = (|| -> Result<GenerateReport> {
        let mut ids: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut files = Vec::new();
        for (table, path, _) in &extract.files {
            if table.starts_with("vocabulary/") {
                continue;
            }
            let name = if options.upper_case { table.to_ascii_uppercase() } else { table.clone() };
            let dest = out.join(format!("{name}.csv"));
            let rows = omop_table(table, path, &dest, &mut ids, options)?;
            files.push((table.clone(), dest, rows));
        }
        let vocabulary = out.join("vocabulary");
        for path in write_vocabulary(&vocabulary)? {
            let name = path.file_stem().map(|s| s.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            files.push((format!("vocabulary/{name}"), path, 0));
        }
        Ok(GenerateReport { files })
    })();
    let _ = std::fs::remove_dir_all(&raw);
    result
}

/// One table of the raw extract rewritten as the CDM has it.
fn omop_table(table: &str, from: &Path, to: &Path, ids: &mut std::collections::HashMap<String, u64>, options: OmopOptions) -> Result<u64> {
    let mut reader = csv::Reader::from_path(from).map_err(|e| csv_err(from, e))?;
    let header: Vec<String> = reader.headers().map_err(|e| csv_err(from, e))?.iter().map(str::to_owned).collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let nir = col("nir");
    let birth = col("birth_date");
    let dropped = ["nir", "first_name", "last_name", "phone", "postcode", "birth_date"];
    let mut out_header: Vec<String> = Vec::new();
    if nir.is_some() {
        out_header.push("person_id".into());
    }
    out_header.extend(header.iter().filter(|h| !dropped.contains(&h.as_str())).cloned());
    if birth.is_some() {
        out_header.extend(
            ["year_of_birth", "month_of_birth", "day_of_birth", "birth_datetime", "location_id", "person_source_value"].map(String::from),
        );
    }
    // A column v5.3 and v5.4 name differently, so that the version shows.
    if table == "visit_occurrence" {
        out_header.push(match options.version {
            crate::omop::CdmVersion::V53 => "admitting_source_concept_id".into(),
            crate::omop::CdmVersion::V54 => "admitted_from_concept_id".into(),
        });
    }
    let shown: Vec<String> = out_header.iter().map(|h| if options.upper_case { h.to_ascii_uppercase() } else { h.clone() }).collect();
    let file = File::create(to).at(to)?;
    let mut writer = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file));
    writer.write_record(&shown).map_err(|e| csv_err(to, e))?;
    let mut rows = 0u64;
    for record in reader.records() {
        let record = record.map_err(|e| csv_err(from, e))?;
        let mut out: Vec<String> = Vec::with_capacity(out_header.len());
        if let Some(i) = nir {
            let next = ids.len() as u64 + 1;
            let id = *ids.entry(record.get(i).unwrap_or("").to_owned()).or_insert(next);
            out.push(id.to_string());
        }
        for (i, h) in header.iter().enumerate() {
            if !dropped.contains(&h.as_str()) {
                out.push(record.get(i).unwrap_or("").to_owned());
            }
        }
        if let Some(i) = birth {
            let d = NaiveDate::parse_from_str(record.get(i).unwrap_or(""), "%Y-%m-%d").ok();
            out.push(d.map(|d| d.year().to_string()).unwrap_or_default());
            out.push(d.map(|d| d.month().to_string()).unwrap_or_default());
            out.push(d.map(|d| d.day().to_string()).unwrap_or_default());
            out.push(d.map(|d| format!("{} 00:00:00", d.format("%Y-%m-%d"))).unwrap_or_default());
            out.push(String::new());
            out.push(String::new());
        }
        if table == "visit_occurrence" {
            out.push("0".into());
        }
        writer.write_record(&out).map_err(|e| csv_err(to, e))?;
        rows += 1;
    }
    writer.flush().at(to)?;
    Ok(rows)
}

// ---- the synthetic vocabulary ------------------------------------------------------------------

/// Concepts of the synthetic vocabulary: (id, name, domain, vocabulary, class, standard, code).
type ConceptRow = (i64, String, &'static str, &'static str, &'static str, &'static str, String);

/// Groupings of the synthetic conditions (real SNOMED concepts): (id, name, children).
const CONDITION_GROUPS: &[(i64, &str, &[i64])] = &[
    (201820, "Diabetes mellitus", &[201826]),
    (316866, "Hypertensive disorder", &[320128]),
    (134057, "Disorder of cardiovascular system", &[316866, 313217, 4329847, 443454]),
    (320136, "Disorder of respiratory system", &[317009, 255573, 255848]),
];
/// The root of the conditions' hierarchy.
const CLINICAL_FINDING: i64 = 441840;
/// Drug classes (ATC 2nd level) as local concepts: OMOP reserves ids above 2,000,000,000 for
/// concepts a site defines, so these cannot clash with the standard vocabularies.
const ATC_CLASSES: &[(i64, &str, &str)] = &[
    (2_000_000_001, "A10", "DRUGS USED IN DIABETES"),
    (2_000_000_002, "C09", "AGENTS ACTING ON THE RENIN-ANGIOTENSIN SYSTEM"),
    (2_000_000_003, "C07", "BETA BLOCKING AGENTS"),
    (2_000_000_004, "C10", "LIPID MODIFYING AGENTS"),
    (2_000_000_005, "R03", "DRUGS FOR OBSTRUCTIVE AIRWAY DISEASES"),
    (2_000_000_006, "B01", "ANTITHROMBOTIC AGENTS"),
    (2_000_000_007, "N06", "PSYCHOANALEPTICS"),
    (2_000_000_008, "N02", "ANALGESICS"),
];

fn vocabulary_names(text: &str) -> Vec<(i64, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (id, name) = l.split_once('\t')?;
            Some((id.trim().parse().ok()?, name.trim().to_owned()))
        })
        .collect()
}

/// Write the vocabulary the synthetic data uses, in the Athena download's format (one
/// tab-separated file per table, upper-case names, dates as YYYYMMDD): every concept the
/// generator writes (conditions, drugs, measurements, gender, race, ethnicity, visit and type
/// concepts), a small hierarchy in `CONCEPT_ANCESTOR` (conditions under SNOMED groupings,
/// ingredients under ATC classes), and the `VOCABULARY`, `DOMAIN`, `CONCEPT_CLASS`,
/// `CONCEPT_RELATIONSHIP` and `RELATIONSHIP` rows they need. Returns the files written.
pub fn write_vocabulary(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).at(dir)?;
    let conditions = vocabulary_names(include_str!("../../schemas/vocabularies/condition_concepts.txt"));
    let drugs = vocabulary_names(include_str!("../../schemas/vocabularies/drug_concepts.txt"));
    let measurements = vocabulary_names(include_str!("../../schemas/vocabularies/measurement_concepts.txt"));
    let mut concepts: Vec<ConceptRow> =
        vec![(0, "No matching concept".into(), "Metadata", "None", "Undefined", "", "No matching concept".into())];
    let fixed: &[(i64, &str, &'static str, &'static str, &'static str, &str)] = &[
        (8507, "MALE", "Gender", "Gender", "Gender", "M"),
        (8532, "FEMALE", "Gender", "Gender", "Gender", "F"),
        (8515, "Asian", "Race", "Race", "Race", "2"),
        (8516, "Black or African American", "Race", "Race", "Race", "3"),
        (8527, "White", "Race", "Race", "Race", "5"),
        (38003563, "Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "Hispanic"),
        (38003564, "Not Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "Not Hispanic"),
        (9201, "Inpatient Visit", "Visit", "Visit", "Visit", "IP"),
        (9202, "Outpatient Visit", "Visit", "Visit", "Visit", "OP"),
        (9203, "Emergency Room Visit", "Visit", "Visit", "Visit", "ER"),
        (262, "Emergency Room and Inpatient Visit", "Visit", "Visit", "Visit", "ERIP"),
        (32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "OMOP4976890"),
        (32856, "Lab", "Type Concept", "Type Concept", "Type Concept", "OMOP4976929"),
        (32810, "Claim", "Type Concept", "Type Concept", "Type Concept", "OMOP4976883"),
        (32879, "Registry", "Type Concept", "Type Concept", "Type Concept", "OMOP4976952"),
    ];
    for (id, name, domain, vocab, class, code) in fixed {
        concepts.push((*id, (*name).into(), domain, vocab, class, "S", (*code).into()));
    }
    concepts.push((CLINICAL_FINDING, "Clinical finding".into(), "Condition", "SNOMED", "Clinical Finding", "S", "404684003".into()));
    for (id, name, _) in CONDITION_GROUPS {
        concepts.push((*id, (*name).into(), "Condition", "SNOMED", "Clinical Finding", "S", format!("{id}")));
    }
    for (id, name) in &conditions {
        concepts.push((*id, name.clone(), "Condition", "SNOMED", "Clinical Finding", "S", format!("{id}")));
    }
    for c in CONDITIONS {
        // The source codes, non-standard, mapped to their standard concept.
        concepts.push((
            icd10_concept(c.icd10),
            icd10_name(c.icd10, &conditions, c.concept),
            "Condition",
            "ICD10",
            "ICD10 code",
            "",
            c.icd10.into(),
        ));
    }
    for (id, code, name) in ATC_CLASSES {
        concepts.push((*id, (*name).into(), "Drug", "ATC", "ATC 2nd", "C", (*code).into()));
    }
    for (id, name) in &drugs {
        concepts.push((*id, name.clone(), "Drug", "RxNorm", "Ingredient", "S", format!("{id}")));
    }
    for (id, name) in &measurements {
        concepts.push((*id, name.clone(), "Measurement", "LOINC", "Lab Test", "S", format!("{id}")));
    }

    // Ancestry: every standard concept is its own ancestor (level 0), conditions descend from
    // their groupings and from the root, ingredients from their ATC class.
    let mut ancestors: Vec<(i64, i64, u32, u32)> = concepts.iter().filter(|c| c.5 == "S" || c.5 == "C").map(|c| (c.0, c.0, 0, 0)).collect();
    let mut parent: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for (group, _, children) in CONDITION_GROUPS {
        for child in *children {
            parent.entry(*child).or_default().push(*group);
        }
        parent.entry(*group).or_default().push(CLINICAL_FINDING);
    }
    for (id, _) in &conditions {
        parent.entry(*id).or_default().push(CLINICAL_FINDING);
    }
    let mut levels: std::collections::BTreeMap<(i64, i64), (u32, u32)> = std::collections::BTreeMap::new();
    for start in parent.keys() {
        // Walk up every path from `start`, recording the shortest and longest distance.
        let mut frontier = vec![(*start, 0u32)];
        while let Some((node, depth)) = frontier.pop() {
            for p in parent.get(&node).into_iter().flatten() {
                let e = levels.entry((*p, *start)).or_insert((depth + 1, depth + 1));
                e.0 = e.0.min(depth + 1);
                e.1 = e.1.max(depth + 1);
                frontier.push((*p, depth + 1));
            }
        }
    }
    ancestors.extend(levels.into_iter().map(|((a, d), (lo, hi))| (a, d, lo, hi)));
    for c in CONDITIONS {
        for (atc, ingredient, _) in c.drugs {
            if let Some((class, _, _)) = ATC_CLASSES.iter().find(|(_, code, _)| atc.starts_with(code)) {
                let pair = (*class, *ingredient, 1, 1);
                if !ancestors.contains(&pair) {
                    ancestors.push(pair);
                }
            }
        }
    }

    let mut written = Vec::new();
    let mut write = |name: &str, header: &[&str], rows: Vec<Vec<String>>| -> Result<()> {
        let path = dir.join(format!("{name}.csv"));
        let file = File::create(&path).at(&path)?;
        let mut w = csv::WriterBuilder::new().delimiter(b'\t').quote_style(csv::QuoteStyle::Never).from_writer(BufWriter::new(file));
        w.write_record(header).map_err(|e| csv_err(&path, e))?;
        for r in rows {
            w.write_record(&r).map_err(|e| csv_err(&path, e))?;
        }
        w.flush().at(&path)?;
        written.push(path);
        Ok(())
    };
    let (start, end) = ("19700101".to_string(), "20991231".to_string());
    write(
        "CONCEPT",
        &[
            "concept_id",
            "concept_name",
            "domain_id",
            "vocabulary_id",
            "concept_class_id",
            "standard_concept",
            "concept_code",
            "valid_start_date",
            "valid_end_date",
            "invalid_reason",
        ],
        concepts
            .iter()
            .map(|c| {
                vec![
                    c.0.to_string(),
                    c.1.clone(),
                    c.2.into(),
                    c.3.into(),
                    c.4.into(),
                    c.5.into(),
                    c.6.clone(),
                    start.clone(),
                    end.clone(),
                    String::new(),
                ]
            })
            .collect(),
    )?;
    write(
        "CONCEPT_ANCESTOR",
        &["ancestor_concept_id", "descendant_concept_id", "min_levels_of_separation", "max_levels_of_separation"],
        ancestors.iter().map(|(a, d, lo, hi)| vec![a.to_string(), d.to_string(), lo.to_string(), hi.to_string()]).collect(),
    )?;
    let maps: Vec<Vec<String>> = CONDITIONS
        .iter()
        .flat_map(|c| {
            let (s, t) = (icd10_concept(c.icd10), c.concept);
            [
                vec![s.to_string(), t.to_string(), "Maps to".into(), start.clone(), end.clone(), String::new()],
                vec![t.to_string(), s.to_string(), "Mapped from".into(), start.clone(), end.clone(), String::new()],
            ]
        })
        .collect();
    write(
        "CONCEPT_RELATIONSHIP",
        &["concept_id_1", "concept_id_2", "relationship_id", "valid_start_date", "valid_end_date", "invalid_reason"],
        maps,
    )?;
    write(
        "RELATIONSHIP",
        &[
            "relationship_id",
            "relationship_name",
            "is_hierarchical",
            "defines_ancestry",
            "reverse_relationship_id",
            "relationship_concept_id",
        ],
        vec![
            vec![
                "Maps to".into(),
                "Non-standard to Standard map (OMOP)".into(),
                "0".into(),
                "0".into(),
                "Mapped from".into(),
                "44818977".into(),
            ],
            vec![
                "Mapped from".into(),
                "Standard to Non-standard map (OMOP)".into(),
                "0".into(),
                "0".into(),
                "Maps to".into(),
                "44818976".into(),
            ],
        ],
    )?;
    let mut vocabularies: Vec<&str> = concepts.iter().map(|c| c.3).collect();
    vocabularies.sort();
    vocabularies.dedup();
    write(
        "VOCABULARY",
        &["vocabulary_id", "vocabulary_name", "vocabulary_reference", "vocabulary_version", "vocabulary_concept_id"],
        vocabularies
            .iter()
            .map(|v| vec![(*v).into(), format!("{v} (synthetic subset)"), "secretum generate".into(), "synthetic".into(), "0".into()])
            .collect(),
    )?;
    let mut domains: Vec<&str> = concepts.iter().map(|c| c.2).collect();
    domains.sort();
    domains.dedup();
    write(
        "DOMAIN",
        &["domain_id", "domain_name", "domain_concept_id"],
        domains.iter().map(|d| vec![(*d).into(), (*d).into(), "0".into()]).collect(),
    )?;
    let mut classes: Vec<&str> = concepts.iter().map(|c| c.4).collect();
    classes.sort();
    classes.dedup();
    write(
        "CONCEPT_CLASS",
        &["concept_class_id", "concept_class_name", "concept_class_concept_id"],
        classes.iter().map(|c| vec![(*c).into(), (*c).into(), "0".into()]).collect(),
    )?;
    write(
        "CONCEPT_SYNONYM",
        &["concept_id", "concept_synonym_name", "language_concept_id"],
        conditions.iter().map(|(id, name)| vec![id.to_string(), name.to_lowercase(), "4180186".into()]).collect(),
    )?;
    Ok(written)
}

/// The local concept id of an ICD-10 source code (above 2,000,000,000: a site's own concepts).
fn icd10_concept(code: &str) -> i64 {
    2_100_000_000 + code.bytes().fold(0i64, |acc, b| (acc * 131 + b as i64) % 90_000_000)
}

fn icd10_name(code: &str, conditions: &[(i64, String)], concept: i64) -> String {
    let name = conditions.iter().find(|(id, _)| *id == concept).map_or("condition", |(_, n)| n.as_str());
    format!("{name} ({code})")
}
