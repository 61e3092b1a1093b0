-- expect: accepted
-- | tables: person, condition_occurrence
-- | rows per patient: 10
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=10
SELECT COUNT(*) FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id
