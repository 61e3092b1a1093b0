-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (96 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT CAST(department AS INT) AS d, COUNT(*) FROM person GROUP BY 1
