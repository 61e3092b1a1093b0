-- expect: accepted
-- | tables: person, condition_occurrence
-- | rows per patient: 10
-- | groups: none
-- | aggregate count(person.year_of_birth / Float64(0.5)): count_values; count Δ=10
SELECT COUNT(year_of_birth / CAST(0.5 AS BIGINT)) FROM person JOIN condition_occurrence USING (person_id)
WHERE year_of_birth = 1994 AND department = '31' AND gender_concept_id = 8532 AND condition_source_value = 'E11.9'
