-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT COUNT(*) FROM person WHERE NOT (year_of_birth < 1940 OR gender_concept_id = 8507)
