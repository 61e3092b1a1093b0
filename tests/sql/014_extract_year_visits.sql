-- expect: accepted
-- | tables: visit_occurrence
-- | rows per patient: 20
-- | groups: public domain (37 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=20
SELECT EXTRACT(YEAR FROM visit_start_date) AS y, COUNT(*) FROM visit_occurrence GROUP BY 1
