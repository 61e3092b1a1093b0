"""Export the OMOP database the `inspectomop` package ships (tiny_omop_test.sqlite3, CDM v5.2,
written by no one here) as an OMOP ETL would ship it, and the counts its raw tables give.

    python export_inspectomop.py OUT

writes OUT/export/ (clinical tables, upper-case headers, comma-separated, ids written as floats
in some tables, empty fields for NULL), OUT/vocabulary/ (tab-separated, unquoted, dates as
YYYYMMDD, as Athena ships them) and OUT/truth.json (patients, patients with a condition, rows
per patient of each table, patients under the most common ancestor concept).
"""

import csv
import importlib.util
import json
import os
import sqlite3
import sys

CLINICAL = [
    "person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
    "procedure_occurrence", "measurement", "observation", "device_exposure", "death",
    "condition_era", "drug_era", "payer_plan_period",
]
VOCABULARY = ["concept", "concept_ancestor", "concept_class", "concept_synonym", "domain", "drug_strength", "vocabulary"]
# Tables whose ids (and every other integer) are written as 123.0, as some ETL tools write them.
FLOAT_IDS = {"condition_occurrence", "measurement", "visit_occurrence"}


def database():
    spec = importlib.util.find_spec("inspectomop")
    if spec is None:
        sys.exit("inspectomop is not installed")
    root = os.path.dirname(spec.origin)
    for dirpath, _, files in os.walk(root):
        if "tiny_omop_test.sqlite3" in files:
            return os.path.join(dirpath, "tiny_omop_test.sqlite3")
    sys.exit("tiny_omop_test.sqlite3 is not in the inspectomop package")


def cell(value, as_float):
    if value is None:
        return ""
    if isinstance(value, int) and as_float:
        return f"{value}.0"
    return str(value)


def main(out):
    db = sqlite3.connect(database())
    os.makedirs(os.path.join(out, "export"), exist_ok=True)
    os.makedirs(os.path.join(out, "vocabulary"), exist_ok=True)
    truth = {"rows_per_patient": {}}
    for table in CLINICAL:
        cur = db.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cur.description]
        with open(os.path.join(out, "export", table.upper() + ".csv"), "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow([n.upper() for n in names])
            for row in cur:
                w.writerow([cell(v, table in FLOAT_IDS) for v in row])
        counts = db.execute(
            f"SELECT person_id, COUNT(*) FROM {table} WHERE person_id IN (SELECT person_id FROM person) GROUP BY 1"
        ).fetchall()
        truth["rows_per_patient"][table] = [n for _, n in counts]
    truth["orphans"] = {
        t: db.execute(f"SELECT COUNT(*) FROM {t} WHERE person_id NOT IN (SELECT person_id FROM person)").fetchone()[0]
        for t in CLINICAL
    }
    truth["patients"] = db.execute("SELECT COUNT(*) FROM person").fetchone()[0]
    truth["patients_with_a_condition"] = db.execute("SELECT COUNT(DISTINCT person_id) FROM condition_occurrence").fetchone()[0]
    ancestor, patients = db.execute(
        "SELECT ca.ancestor_concept_id, COUNT(DISTINCT co.person_id) AS n FROM condition_occurrence co "
        "JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id "
        "GROUP BY 1 ORDER BY n DESC, 1 LIMIT 1"
    ).fetchone()
    truth["ancestor"] = {"concept_id": ancestor, "patients": patients}
    for table in VOCABULARY:
        cur = db.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cur.description]
        with open(os.path.join(out, "vocabulary", table.upper() + ".csv"), "w") as fh:
            fh.write("\t".join(names) + "\n")
            for row in cur:
                values = []
                for n, v in zip(names, row):
                    v = cell(v, False)
                    if n.endswith("_date") and len(v) == 10 and v[4] == "-":
                        v = v.replace("-", "")
                    values.append(v.replace("\t", " ").replace("\n", " "))
                fh.write("\t".join(values) + "\n")
    with open(os.path.join(out, "truth.json"), "w") as fh:
        json.dump(truth, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
