-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (127 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT year_of_birth, COUNT(*) AS n FROM person GROUP BY year_of_birth ORDER BY n DESC LIMIT 5
