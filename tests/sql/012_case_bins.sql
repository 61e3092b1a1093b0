-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (3 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT CASE WHEN year_of_birth < 1950 THEN 'before 1950' WHEN year_of_birth < 1980 THEN '1950-1979' ELSE '1980 and after' END AS cohort, COUNT(*) FROM person GROUP BY 1
