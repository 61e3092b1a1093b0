-- expect: accepted
-- delta: 1e-6
-- | tables: condition_occurrence
-- | rows per patient: 10
-- | groups: partition selection (ℓ0 = 10)
-- | aggregate count(Int64(1)): count_rows; count Δ=10
SELECT condition_source_value, COUNT(*) FROM condition_occurrence GROUP BY condition_source_value
