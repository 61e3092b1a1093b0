-- expect: accepted
-- | tables: person, measurement
-- | rows per patient: 20
-- | groups: public domain (2 keys)
-- | aggregate count(Int64(1)): count_rows; count Δ=20
SELECT p.gender_concept_id AS sex, COUNT(*) AS n FROM person AS p INNER JOIN measurement AS m ON m.person_id = p.person_id GROUP BY p.gender_concept_id
