-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT COUNT(*) FROM person WHERE CASE WHEN year_of_birth > 1950 THEN 1 / (year_of_birth - 1980) ELSE 0 END = 0
