-- expect: accepted
-- | tables: person, condition_occurrence
-- | rows per patient: 10
-- | groups: none
-- | aggregate count(DISTINCT person.person_id): count_patients; patients Δ=1
SELECT COUNT(DISTINCT person_id) FROM person JOIN condition_occurrence USING (person_id)
