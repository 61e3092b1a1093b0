-- expect: accepted
-- | tables: condition_occurrence
-- | rows per patient: 10
-- | groups: public domain (37 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=10
SELECT date_trunc('year', condition_start_date) AS y, COUNT(*) FROM condition_occurrence GROUP BY 1
