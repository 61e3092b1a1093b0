-- expect: accepted
-- | tables: condition_occurrence
-- | rows per patient: 10
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=10
SELECT COUNT(*) FROM condition_occurrence WHERE condition_start_date BETWEEN '2020-01-01' AND '2020-12-31'
