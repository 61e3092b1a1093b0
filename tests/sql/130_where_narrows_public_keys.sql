-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (10 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT year_of_birth / 10 * 10 AS decade, COUNT(*) FROM person WHERE year_of_birth >= 1930 GROUP BY 1
