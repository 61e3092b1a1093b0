-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (13 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT year_of_birth / 10 AS d, COUNT(*) FROM person GROUP BY 1
