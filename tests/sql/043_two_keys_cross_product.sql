-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (26 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT gender_concept_id, year_of_birth / 10 * 10 AS decade, COUNT(*) FROM person GROUP BY 1, 2
