# Bounds: clamping ranges from the schema, WHERE conditions and interval arithmetic

== sum bounded by where
SELECT SUM(value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 20
-> accepted
   tables: measurement (≤ 100 per patient)
   rows per patient: 100
   groups: none
   aggregate 1: sum of measurement.value_as_number in [0, 20]; sum Δ 2000

== avg of expression
SELECT AVG(2026 - year_of_birth) AS age FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: mean of an expression of person.year_of_birth in [0, 126]; centred sum Δ 63, values Δ 1

== median age at diagnosis
SELECT MEDIAN(EXTRACT(YEAR FROM condition_start_date) - year_of_birth) FROM person JOIN condition_occurrence USING (person_id) WHERE condition_source_value LIKE 'E11%'
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: median of an expression of condition_occurrence.condition_start_date, person.year_of_birth in [-36, 126]; quantile Δ 40

== widening cast in avg
SELECT AVG(CAST(year_of_birth AS DOUBLE)) FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: mean of person.year_of_birth in [1900, 2026]; centred sum Δ 63, values Δ 1

== between tightens bounds
SELECT AVG(value_as_number) FROM measurement WHERE value_as_number >= 3 AND value_as_number <= 15
-> accepted
   tables: measurement (≤ 100 per patient)
   rows per patient: 100
   groups: none
   aggregate 1: mean of measurement.value_as_number in [3, 15]; centred sum Δ 600, values Δ 100

== attack divisor through cast
-- The published oracle: the divisor looks like 0.5 but evaluates to 0. The analysis now applies
-- the cast as the evaluator does: a division by the literal 0 has no bounds, so SUM is refused
-- from the SQL alone (145 asks the same through COUNT, which is answered: the division is NULL).
SELECT SUM(year_of_birth / CAST(0.5 AS BIGINT)) FROM person JOIN condition_occurrence USING (person_id)
WHERE year_of_birth = 1994 AND department = '31' AND gender_concept_id = 8532 AND condition_source_value = 'E11.9'
-> refused unbounded-value

== float overflow is null
SELECT AVG(CASE WHEN value_as_number * 1e308 * 10 IS NULL THEN 0 ELSE 1 END) FROM measurement
-> accepted
   tables: measurement (≤ 100 per patient)
   rows per patient: 100
   groups: none
   aggregate 1: mean of an expression of measurement.value_as_number in [0, 1]; centred sum Δ 50, values Δ 100

== an explicit clamp bounds any expression
SELECT SUM(LEAST(GREATEST(value_as_number * value_as_number, 0), 100)) FROM measurement
-> accepted
   tables: measurement (≤ 100 per patient)
   rows per patient: 100
   groups: none
   aggregate 1: sum of an expression of measurement.value_as_number in [0, 100]; sum Δ 10000

== a clamp open on one side is no bound
SELECT SUM(GREATEST(value_as_number * value_as_number, 0)) FROM measurement
-> accepted
   tables: measurement (≤ 100 per patient)
   rows per patient: 100
   groups: none
   aggregate 1: sum of an expression of measurement.value_as_number in [0, 250000]; sum Δ 25000000
