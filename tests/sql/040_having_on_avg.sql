-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: public domain (2 keys)
-- | aggregate avg(person.year_of_birth): mean bounds [1900, 2026]; centred_sum Δ=63, count Δ=1
SELECT gender_concept_id, AVG(year_of_birth) FROM person GROUP BY 1 HAVING AVG(year_of_birth) > 1950
