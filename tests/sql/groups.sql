# Groups: public domains (every key released, zero-filled) and DP partition selection

== count by gender
SELECT gender_concept_id, COUNT(*) FROM person GROUP BY gender_concept_id
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: count of rows; rows Δ 1

== issue example decade e11
SELECT year_of_birth / 10 * 10 AS decade, COUNT(DISTINCT person_id) FROM person JOIN condition_occurrence USING (person_id) WHERE condition_source_value LIKE 'E11%' GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: public domain of person.year_of_birth (13 keys)
   aggregate 1: count of patients; patients Δ 1

== case bins
SELECT CASE WHEN year_of_birth < 1950 THEN 'before 1950' WHEN year_of_birth < 1980 THEN '1950-1979' ELSE '1980 and after' END AS cohort, COUNT(*) FROM person GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.year_of_birth (3 keys)
   aggregate 1: count of rows; rows Δ 1

== date trunc year
SELECT date_trunc('year', condition_start_date) AS y, COUNT(*) FROM condition_occurrence GROUP BY 1
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: public domain of condition_occurrence.condition_start_date (37 keys)
   aggregate 1: count of rows; rows Δ 40

== extract year visits
SELECT EXTRACT(YEAR FROM visit_start_date) AS y, COUNT(*) FROM visit_occurrence GROUP BY 1
-> accepted
   tables: visit_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: public domain of visit_occurrence.visit_start_date (37 keys)
   aggregate 1: count of rows; rows Δ 40

== partition selection with delta [delta=1e-6]
SELECT condition_source_value, COUNT(*) FROM condition_occurrence GROUP BY condition_source_value
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: partition selection over condition_occurrence.condition_source_value (ℓ0 = 40)
   aggregate 1: count of rows; rows Δ 40

== division by literal group
SELECT year_of_birth / 10 AS d, COUNT(*) FROM person GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.year_of_birth (13 keys)
   aggregate 1: count of rows; rows Δ 1

== modulo literal group
SELECT year_of_birth % 2 AS parity, COUNT(*) FROM person GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.year_of_birth (2 keys)
   aggregate 1: count of rows; rows Δ 1

== group by department vocabulary
SELECT department, COUNT(*) FROM person GROUP BY department
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.department (96 keys)
   aggregate 1: count of rows; rows Δ 1

== patients by gender
SELECT gender_concept_id, COUNT(DISTINCT person_id) FROM person JOIN drug_exposure USING (person_id) GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient), drug_exposure (≤ 40 per patient)
   rows per patient: 40
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: count of patients; patients Δ 1

== two keys cross product
SELECT gender_concept_id, year_of_birth / 10 * 10 AS decade, COUNT(*) FROM person GROUP BY 1, 2
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.gender_concept_id, person.year_of_birth (39 keys)
   aggregate 1: count of rows; rows Δ 1

== count by concept vocabulary
SELECT condition_concept_id, COUNT(*) FROM condition_occurrence GROUP BY 1
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: public domain of condition_occurrence.condition_concept_id (34 keys)
   aggregate 1: count of rows; rows Δ 40

== needs delta
SELECT condition_source_value, COUNT(*) FROM condition_occurrence GROUP BY 1
-> refused needs-delta

== substr prefix needs delta
SELECT substr(condition_source_value, 1, 3) AS chapter, COUNT(*) FROM condition_occurrence GROUP BY 1
-> refused needs-delta

== rollup
SELECT gender_concept_id, COUNT(*) FROM person GROUP BY ROLLUP (gender_concept_id)
-> refused unsupported-grouping

== where narrows public keys
SELECT year_of_birth / 10 * 10 AS decade, COUNT(*) FROM person WHERE year_of_birth >= 1930 GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.year_of_birth (10 keys)
   aggregate 1: count of rows; rows Δ 1

== in list narrows vocabulary keys
SELECT department, COUNT(*) FROM person WHERE department IN ('75', '92', '93') GROUP BY department
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.department (3 keys)
   aggregate 1: count of rows; rows Δ 1

== filter on other columns keeps keys
SELECT gender_concept_id, COUNT(*) FROM person JOIN condition_occurrence USING (person_id) WHERE year_of_birth > 1950 AND condition_source_value LIKE 'I10%' GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: count of rows; rows Δ 40

== query tightens groups per patient [max-groups=3]
SELECT condition_concept_id, COUNT(*), COUNT(DISTINCT person_id) FROM condition_occurrence GROUP BY 1
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 3
   groups: public domain of condition_occurrence.condition_concept_id (34 keys)
   aggregate 1: count of rows; rows Δ 3
   aggregate 2: count of patients; patients Δ 3

== zero groups refused [max-groups=0]
SELECT condition_concept_id, COUNT(*) FROM condition_occurrence GROUP BY 1
-> refused max-groups

== too many public groups
SELECT year_of_birth, condition_start_date, COUNT(*) FROM person JOIN condition_occurrence USING (person_id) GROUP BY 1, 2
-> refused too-many-groups
