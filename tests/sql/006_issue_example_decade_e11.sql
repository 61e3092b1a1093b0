-- expect: accepted
-- | tables: person, condition_occurrence
-- | rows per patient: 10
-- | groups: public domain (13 keys)
-- | aggregate count(DISTINCT person.person_id): count_patients; patients Δ=1
SELECT year_of_birth / 10 * 10 AS decade, COUNT(DISTINCT person_id) FROM person JOIN condition_occurrence USING (person_id) WHERE condition_source_value LIKE 'E11%' GROUP BY 1
