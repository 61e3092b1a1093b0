-- expect: accepted
-- max-groups: 3
-- | tables: condition_occurrence
-- | rows per patient: 3
-- | groups: public domain (14 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=3
-- | aggregate count(DISTINCT condition_occurrence.person_id): count_patients; patients Δ=3
SELECT condition_concept_id, COUNT(*), COUNT(DISTINCT person_id) FROM condition_occurrence GROUP BY 1
