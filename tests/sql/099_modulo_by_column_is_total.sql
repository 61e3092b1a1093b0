-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SELECT COUNT(*) FROM person WHERE year_of_birth % gender_concept_id = 0
