-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (2 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT gender_concept_id, COUNT(*) FROM person GROUP BY gender_concept_id
