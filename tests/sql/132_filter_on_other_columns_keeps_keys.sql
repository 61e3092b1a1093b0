-- expect: accepted
-- | tables: person, condition_occurrence
-- | rows per patient: 10
-- | groups: public domain (2 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=10
SELECT gender_concept_id, COUNT(*) FROM person JOIN condition_occurrence USING (person_id) WHERE year_of_birth > 1950 AND condition_source_value LIKE 'I10%' GROUP BY 1
