-- expect: accepted
-- | tables: person, condition_occurrence, measurement
-- | rows per patient: 20
-- | groups: none
-- | aggregate count(DISTINCT p.person_id): count_patients; patients Δ=1
SELECT COUNT(DISTINCT p.person_id) FROM person p JOIN condition_occurrence c ON c.person_id = p.person_id JOIN measurement m ON m.person_id = p.person_id WHERE c.condition_source_value LIKE 'E11%'
