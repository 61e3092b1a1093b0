-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate avg(person.year_of_birth): mean bounds [1900, 2026]; centred_sum Δ=63, count Δ=1
SELECT AVG(CAST(year_of_birth AS DOUBLE)) FROM person
