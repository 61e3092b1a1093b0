# Expressions: admitted functions, evaluated with total semantics (nothing can fail on a value)

== in list filter
SELECT COUNT(*) FROM condition_occurrence WHERE condition_source_value IN ('E11.9', 'E11.0', 'I10')
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== is null filter
SELECT COUNT(*) FROM person WHERE department IS NULL
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== not or filter
SELECT COUNT(*) FROM person WHERE NOT (year_of_birth < 1940 OR gender_concept_id = 8507)
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== like filter
SELECT COUNT(*) FROM drug_exposure WHERE drug_source_value LIKE 'A10%'
-> accepted
   tables: drug_exposure (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== arithmetic in where
SELECT COUNT(*) FROM person WHERE year_of_birth + 18 > 2000
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== try cast is total
SELECT COUNT(*) FROM condition_occurrence WHERE TRY_CAST(condition_source_value AS INT) IS NULL
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== coalesce in where
SELECT COUNT(*) FROM person WHERE COALESCE(department, '00') = '75'
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== lower in where
SELECT COUNT(*) FROM condition_occurrence WHERE lower(condition_source_value) LIKE 'e11%'
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== date range filter
SELECT COUNT(*) FROM condition_occurrence WHERE condition_start_date BETWEEN '2020-01-01' AND '2020-12-31'
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== failing cast is null
SELECT COUNT(*) FROM condition_occurrence WHERE CAST(condition_source_value AS INT) > 5
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== total cast in group key
SELECT CAST(department AS INT) AS d, COUNT(*) FROM person GROUP BY 1
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.department (96 keys)
   aggregate 1: count of rows; rows Δ 1

== division by column is total
SELECT COUNT(*) FROM person WHERE year_of_birth / gender_concept_id > 0
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== division by zero is null
SELECT COUNT(*) FROM person WHERE year_of_birth / 0 > 1
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== modulo by column is total
SELECT COUNT(*) FROM person WHERE year_of_birth % gender_concept_id = 0
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== division by zero in case is null
SELECT COUNT(*) FROM person WHERE CASE WHEN year_of_birth > 1950 THEN 1 / (year_of_birth - 1980) ELSE 0 END = 0
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== negative substring length is null
SELECT COUNT(*) FROM condition_occurrence WHERE substr(condition_source_value, 1, -1) = ''
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== date part must be literal
SELECT COUNT(*) FROM condition_occurrence WHERE date_trunc(condition_source_value, condition_start_date) IS NULL
-> refused literal-argument

== random in where
SELECT COUNT(*) FROM person WHERE random() < 0.5
-> refused nondeterministic

== now in where
SELECT COUNT(*) FROM condition_occurrence WHERE condition_start_date < now()
-> refused nondeterministic

== order by random
SELECT gender_concept_id, COUNT(*) FROM person GROUP BY 1 ORDER BY random()
-> refused nondeterministic

== function not allowed
SELECT COUNT(*) FROM condition_occurrence WHERE to_timestamp(condition_source_value) IS NULL
-> refused unsupported-function

== attack overflow then abs
-- The second published oracle: integer overflow wraps, abs of the wrapped minimum raised an
-- error. Overflow now gives NULL and abs is total.
SELECT COUNT(*) FROM person JOIN condition_occurrence USING (person_id)
WHERE abs(CASE WHEN year_of_birth = 1994 AND condition_source_value = 'E11.9' THEN 4611686018427387904 * 2 ELSE 0 END) >= 0
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== cast to decimal refused
-- Decimal casts have no total kernel: not admitted.
SELECT COUNT(*) FROM person WHERE CAST(year_of_birth AS DECIMAL(3, 0)) > 0
-> refused unsupported-expression

== function not admitted
-- repeat() can build a string whose size depends on a value: not admitted.
SELECT COUNT(*) FROM person WHERE repeat(department, year_of_birth) = ''
-> refused unsupported-function

== like with data pattern is total
-- A pattern built from the data: total (a pattern that does not compile would give NULL).
SELECT COUNT(*) FROM condition_occurrence WHERE condition_source_value LIKE (condition_source_value || '%')
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== like escape refused
SELECT COUNT(*) FROM condition_occurrence WHERE condition_source_value LIKE 'E1!%' ESCAPE '!'
-> refused unsupported-expression

== attack divisor through cast counted
SELECT COUNT(year_of_birth / CAST(0.5 AS BIGINT)) FROM person JOIN condition_occurrence USING (person_id)
WHERE year_of_birth = 1994 AND department = '31' AND gender_concept_id = 8532 AND condition_source_value = 'E11.9'
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of values of an expression of person.year_of_birth; values Δ 40
