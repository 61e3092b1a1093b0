-- expect: accepted
-- | tables: condition_occurrence
-- | rows per patient: 10
-- | groups: public domain (14 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=10
SELECT condition_concept_id, COUNT(*) FROM condition_occurrence GROUP BY 1
