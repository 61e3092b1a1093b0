# Cohorts: per-patient relations (subqueries and CTEs grouped by the privacy unit), EXISTS and IN cohort filters, dates relative to an index

== first diagnosis per patient
WITH f AS (SELECT person_id, MIN(condition_start_date) AS index_date FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id) SELECT COUNT(*) FROM f
-> accepted
   tables: f (per-patient relation: 1 per patient)
   derived f.index_date: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== age at first diagnosis
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id) SELECT AVG(EXTRACT(YEAR FROM f.d) - p.year_of_birth) FROM f JOIN person p ON p.person_id = f.person_id
-> accepted
   tables: f (per-patient relation: 1 per patient), person (≤ 1 per patient)
   derived f.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   rows per patient: 1
   groups: none
   aggregate 1: mean of an expression of f.d, person.year_of_birth in [-36, 126]; centred sum Δ 81, values Δ 1

== cohort study by age at index
WITH first_t2d AS (SELECT person_id, MIN(condition_start_date) AS index_date FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id), hba1c AS (SELECT m.person_id, COUNT(*) AS n_tests, AVG(m.value_as_number) AS mean_hba1c FROM measurement m JOIN first_t2d f ON m.person_id = f.person_id WHERE m.measurement_source_value = '4548-4' AND m.measurement_date >= f.index_date GROUP BY m.person_id) SELECT EXTRACT(YEAR FROM f.index_date) - p.year_of_birth AS age_at_index, COUNT(*) AS patients, AVG(h.mean_hba1c) FROM first_t2d f JOIN person p ON p.person_id = f.person_id JOIN hba1c h ON h.person_id = f.person_id WHERE h.n_tests >= 2 AND f.index_date >= DATE '2015-01-01' GROUP BY 1
-> accepted
   tables: f (per-patient relation: 1 per patient), person (≤ 1 per patient), h (per-patient relation: 1 per patient)
   derived f.index_date: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   derived h.n_tests: in [0, 100] (a count of at most the 100 rows a patient may have)
   derived h.mean_hba1c: in [0, 500] (avg of measurement.value_as_number)
   rows per patient: 1
   groups: the integers -11..126 of an expression of f.index_date, person.year_of_birth (138 keys)
   aggregate 1: count of rows; rows Δ 1
   aggregate 2: mean of h.mean_hba1c in [0, 500]; centred sum Δ 250, values Δ 1

== subquery in from grouped by the unit
SELECT COUNT(*), AVG(t.n) FROM (SELECT person_id, COUNT(*) AS n FROM measurement GROUP BY person_id) t
-> accepted
   tables: t (per-patient relation: 1 per patient)
   derived t.n: in [0, 100] (a count of at most the 100 rows a patient may have)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1
   aggregate 2: mean of t.n in [0, 100]; centred sum Δ 50, values Δ 1

== per-patient sum and its bounds
SELECT SUM(t.total) FROM (SELECT person_id, SUM(days_supply) AS total FROM drug_exposure GROUP BY person_id) t
-> accepted
   tables: t (per-patient relation: 1 per patient)
   derived t.total: in [0, 14600] (a sum of at most 40 values of drug_exposure.days_supply)
   rows per patient: 1
   groups: none
   aggregate 1: sum of t.total in [0, 14600]; sum Δ 14600

== per-patient having
SELECT COUNT(*) FROM (SELECT person_id FROM measurement GROUP BY person_id HAVING COUNT(*) >= 3) t
-> accepted
   tables: t (per-patient relation: 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== per-patient count distinct and bool_or
SELECT AVG(t.codes), COUNT(*) FROM (SELECT person_id, COUNT(DISTINCT condition_concept_id) AS codes, BOOL_OR(condition_source_value LIKE 'I10%') AS hypertensive FROM condition_occurrence GROUP BY person_id) t WHERE t.hypertensive
-> accepted
   tables: t (per-patient relation: 1 per patient)
   derived t.codes: in [0, 40] (a count of at most the 40 rows a patient may have)
   rows per patient: 1
   groups: none
   aggregate 1: mean of t.codes in [0, 40]; centred sum Δ 20, values Δ 1
   aggregate 2: count of rows; rows Δ 1

== per-patient relation joined to a table
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id) SELECT COUNT(*) FROM drug_exposure x JOIN f ON x.person_id = f.person_id WHERE x.drug_exposure_start_date >= f.d
-> accepted
   tables: drug_exposure (≤ 40 per patient), f (per-patient relation: 1 per patient)
   derived f.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== two per-patient relations joined
WITH a AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence GROUP BY person_id), b AS (SELECT person_id, MIN(drug_exposure_start_date) AS t FROM drug_exposure GROUP BY person_id) SELECT AVG(b.t - a.d) FROM a JOIN b ON a.person_id = b.person_id
-> accepted
   tables: a (per-patient relation: 1 per patient), b (per-patient relation: 1 per patient)
   derived a.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   derived b.t: in [1990-01-01, 2026-12-31] (min of drug_exposure.drug_exposure_start_date)
   rows per patient: 1
   groups: none
   aggregate 1: mean of an expression of a.d, b.t in [-13513, 13513]; centred sum Δ 13513, values Δ 1

== treated after diagnosis
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id), t AS (SELECT x.person_id FROM drug_exposure x JOIN f ON x.person_id = f.person_id WHERE x.drug_source_value = 'A10BA02' AND x.drug_exposure_start_date >= f.d GROUP BY x.person_id) SELECT COUNT(*) FROM t
-> accepted
   tables: t (per-patient relation: 1 per patient)
   derived f.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== months since index as a public key
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id) SELECT (m.measurement_date - f.d) / 30 AS month, COUNT(*) FROM measurement m JOIN f ON m.person_id = f.person_id WHERE m.measurement_date >= f.d AND m.measurement_date < f.d + INTERVAL '365 days' GROUP BY 1
-> accepted
   tables: measurement (≤ 100 per patient), f (per-patient relation: 1 per patient)
   derived f.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   rows per patient: 100
   groups: the integers -1..13 of an expression of f.d, measurement.measurement_date (15 keys)
   aggregate 1: count of rows; rows Δ 100

== follow-up in an observation window
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id) SELECT COUNT(*) FROM f JOIN observation_period o ON o.person_id = f.person_id WHERE o.observation_period_start_date <= f.d AND o.observation_period_end_date >= f.d + INTERVAL '1 year'
-> accepted
   tables: f (per-patient relation: 1 per patient), observation_period (≤ 2 per patient)
   derived f.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   rows per patient: 2
   groups: none
   aggregate 1: count of rows; rows Δ 2

== exists on the unit
SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = p.person_id AND x.drug_source_value = 'A10BA02')
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== exists on the unit, grouped by a public key
SELECT gender_concept_id, COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = p.person_id AND x.drug_source_value = 'A10BA02') GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: count of rows; rows Δ 1

== not exists on the unit
SELECT COUNT(*) FROM person p WHERE NOT EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = p.person_id)
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== in a patient set
SELECT COUNT(*) FROM person WHERE person_id IN (SELECT person_id FROM condition_occurrence WHERE condition_source_value LIKE 'I10%')
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== not in a patient set
SELECT gender_concept_id, COUNT(*) FROM person WHERE person_id NOT IN (SELECT person_id FROM condition_occurrence) GROUP BY gender_concept_id
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: count of rows; rows Δ 1

== in a per-patient set with having
SELECT COUNT(*) FROM person WHERE person_id IN (SELECT person_id FROM measurement GROUP BY person_id HAVING COUNT(*) >= 2)
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== per-patient count needs no clamp to be filtered
SELECT COUNT(*) FROM (SELECT person_id, COUNT(*) AS n FROM condition_occurrence GROUP BY person_id) t WHERE t.n > 100
-> accepted
   tables: t (per-patient relation: 1 per patient)
   derived t.n: in [0, 40] (a count of at most the 40 rows a patient may have)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== derived column without bounds clamped explicitly
SELECT AVG(LEAST(GREATEST(t.c, 0), 5)) FROM (SELECT person_id, MIN(condition_concept_id) AS c FROM condition_occurrence GROUP BY person_id) t
-> accepted
   tables: t (per-patient relation: 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: mean of an expression of t.c in [0, 5]; centred sum Δ 2.5, values Δ 1

== derived column without bounds aggregated
SELECT SUM(t.c) FROM (SELECT person_id, MIN(condition_concept_id) AS c FROM condition_occurrence GROUP BY person_id) t
-> refused unbounded-value

== subquery selecting rows
SELECT COUNT(*) FROM (SELECT * FROM person WHERE year_of_birth > 1950) t
-> refused per-patient-relation

== cte selecting rows
WITH t AS (SELECT * FROM person) SELECT COUNT(*) FROM t
-> refused per-patient-relation

== subquery grouped by another column
SELECT COUNT(*) FROM (SELECT gender_concept_id, COUNT(*) AS n FROM person GROUP BY gender_concept_id) t
-> refused per-patient-relation

== subquery grouped by the unit and another column
SELECT COUNT(*) FROM (SELECT person_id, condition_concept_id, COUNT(*) AS n FROM condition_occurrence GROUP BY person_id, condition_concept_id) t
-> refused per-patient-relation

== per-patient column in output without an aggregate
SELECT t.n FROM (SELECT person_id, COUNT(*) AS n FROM measurement GROUP BY person_id) t
-> refused aggregate-required

== per-patient relation not joined on the unit
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence GROUP BY person_id) SELECT COUNT(*) FROM person p JOIN f ON p.year_of_birth = f.d
-> refused join-on-unit

== per-patient relation cross joined
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence GROUP BY person_id) SELECT COUNT(*) FROM person p, f
-> refused join-on-unit

== per-patient unit in output
SELECT COUNT(*), AVG(t.person_id) FROM (SELECT person_id, COUNT(*) AS n FROM measurement GROUP BY person_id) t
-> refused unit-or-identifier

== min over raw rows in a per-patient relation is fine but not outside
SELECT MIN(t.d) FROM (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence GROUP BY person_id) t
-> refused min-max

== recursive cte
WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT COUNT(*) FROM r
-> refused recursive-cte

== lateral
SELECT COUNT(*) FROM person p, LATERAL (SELECT person_id FROM condition_occurrence c WHERE c.person_id = p.person_id) x
-> refused subquery

== set operation inside
SELECT COUNT(*) FROM (SELECT person_id FROM condition_occurrence UNION SELECT person_id FROM drug_exposure) t
-> refused set-operation

== set operation inside an in
SELECT COUNT(*) FROM person WHERE person_id IN (SELECT person_id FROM condition_occurrence UNION SELECT person_id FROM drug_exposure)
-> refused set-operation

== scalar subquery
SELECT COUNT(*) FROM person WHERE year_of_birth > (SELECT AVG(year_of_birth) FROM person)
-> refused subquery

== exists correlated on another column
SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.condition_concept_id = p.year_of_birth)
-> refused correlation

== exists correlated on the unit comparing with the outer row
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id) SELECT COUNT(*) FROM f WHERE NOT EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = f.person_id AND x.drug_source_value LIKE 'A10A%' AND x.drug_exposure_start_date < f.d)
-> accepted
   tables: f (per-patient relation: 1 per patient)
   derived f.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== exists comparing with the outer unit
SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = p.person_id AND c.condition_concept_id > p.person_id)
-> refused unit-or-identifier

== exists correlated twice on the unit
SELECT COUNT(*) FROM person p JOIN measurement m ON m.person_id = p.person_id WHERE EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = p.person_id AND c.person_id = m.person_id)
-> refused correlation

== exists without correlation
SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.condition_source_value = 'E11')
-> refused correlation

== in selecting another column
SELECT COUNT(*) FROM person WHERE year_of_birth IN (SELECT condition_concept_id FROM condition_occurrence)
-> refused correlation

== in correlated
SELECT COUNT(*) FROM person p WHERE person_id IN (SELECT c.person_id FROM condition_occurrence c WHERE c.condition_concept_id = p.year_of_birth)
-> refused correlation

== exists in the select list
SELECT COUNT(*), SUM(CASE WHEN EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = p.person_id) THEN 1 ELSE 0 END) FROM person p
-> refused subquery

== per-patient nested aggregate over patients
SELECT COUNT(*) FROM (SELECT person_id, COUNT(*) AS n FROM (SELECT gender_concept_id AS person_id FROM person) s GROUP BY person_id) t
-> refused per-patient-relation

== data-dependent failure inside a cte is total
WITH f AS (SELECT person_id, MAX(CAST(condition_source_value AS INT)) AS v FROM condition_occurrence GROUP BY person_id) SELECT COUNT(*) FROM f WHERE 1 / (f.v - 250) > 0
-> accepted
   tables: f (per-patient relation: 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== time to event histogram with a left join
WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id), o AS (SELECT person_id, MAX(observation_period_end_date) AS end_d FROM observation_period GROUP BY person_id), x AS (SELECT person_id, MIN(condition_start_date) AS dd FROM condition_occurrence WHERE condition_source_value LIKE 'I10%' GROUP BY person_id) SELECT p.gender_concept_id, LEAST(GREATEST((COALESCE(x.dd, o.end_d) - f.d) / 365, 0), 10) AS years, x.dd IS NOT NULL AS event, COUNT(*) FROM f JOIN person p ON p.person_id = f.person_id JOIN o ON o.person_id = f.person_id LEFT JOIN x ON x.person_id = f.person_id WHERE o.end_d >= f.d GROUP BY 1, 2, 3
-> accepted
   tables: f (per-patient relation: 1 per patient), person (≤ 1 per patient), o (per-patient relation: 1 per patient), x (per-patient relation: 1 per patient)
   derived f.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   derived o.end_d: in [1990-01-01, 2026-12-31] (max of observation_period.observation_period_end_date)
   derived x.dd: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   rows per patient: 1
   groups: the public domain of person.gender_concept_id × the integers 0..10 of an expression of f.d, o.end_d, x.dd × the integers 0..1 of an expression of x.dd (66 keys)
   aggregate 1: count of rows; rows Δ 1

== left join to a table keeps a condition on it above the join
SELECT COUNT(*) FROM person p LEFT JOIN drug_exposure x ON x.person_id = p.person_id WHERE x.drug_source_value IS NULL
-> accepted
   tables: person (≤ 1 per patient), drug_exposure (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== right join
SELECT COUNT(*) FROM person p RIGHT JOIN drug_exposure x ON x.person_id = p.person_id
-> refused join-on-unit

== cohort filtered from a per-patient relation
WITH f AS (SELECT person_id, MIN(condition_start_date) AS index_date FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id), c AS (SELECT f.person_id, f.index_date FROM f WHERE f.index_date >= DATE '2005-01-01' AND NOT EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = f.person_id AND x.drug_source_value LIKE 'A10A%' AND x.drug_exposure_start_date < f.index_date)) SELECT COUNT(*), AVG(EXTRACT(YEAR FROM c.index_date) - p.year_of_birth) FROM c JOIN person p ON p.person_id = c.person_id
-> accepted
   tables: c (per-patient relation: 1 per patient), person (≤ 1 per patient)
   derived f.index_date: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   derived c.index_date: in [2005-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date, narrowed by WHERE)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1
   aggregate 2: mean of an expression of c.index_date, person.year_of_birth in [-21, 126]; centred sum Δ 73.5, values Δ 1

== per-patient relations joined without grouping
WITH a AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence GROUP BY person_id), b AS (SELECT person_id, COUNT(*) AS n FROM measurement GROUP BY person_id), c AS (SELECT a.person_id, a.d, b.n FROM a JOIN b ON a.person_id = b.person_id WHERE b.n >= 2) SELECT SUM(c.n) FROM c
-> accepted
   tables: c (per-patient relation: 1 per patient)
   derived a.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   derived b.n: in [0, 100] (a count of at most the 100 rows a patient may have)
   derived c.d: in [1990-01-01, 2026-12-31] (min of condition_occurrence.condition_start_date)
   derived c.n: in [2, 100] (a count of at most the 100 rows a patient may have, narrowed by WHERE)
   rows per patient: 1
   groups: none
   aggregate 1: sum of c.n in [2, 100]; sum Δ 100

== rows of a table selected next to a per-patient relation
WITH a AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence GROUP BY person_id), c AS (SELECT a.person_id, m.value_as_number FROM a JOIN measurement m ON a.person_id = m.person_id) SELECT COUNT(*) FROM c
-> refused per-patient-relation
