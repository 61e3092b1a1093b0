-- expect: refused unbounded-value
-- The published oracle: the divisor looks like 0.5 but evaluates to 0. The analysis now applies
-- the cast as the evaluator does: a division by the literal 0 has no bounds, so SUM is refused
-- from the SQL alone (145 asks the same through COUNT, which is answered: the division is NULL).
SELECT SUM(year_of_birth / CAST(0.5 AS BIGINT)) FROM person JOIN condition_occurrence USING (person_id)
WHERE year_of_birth = 1994 AND department = '31' AND gender_concept_id = 8532 AND condition_source_value = 'E11.9'
