-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (2 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT year_of_birth % 2 AS parity, COUNT(*) FROM person GROUP BY 1
