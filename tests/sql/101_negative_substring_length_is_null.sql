-- expect: accepted
-- | tables: condition_occurrence
-- | rows per patient: 10
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=10
SELECT COUNT(*) FROM condition_occurrence WHERE substr(condition_source_value, 1, -1) = ''
