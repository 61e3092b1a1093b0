-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (3 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT department, COUNT(*) FROM person WHERE department IN ('75', '92', '93') GROUP BY department
