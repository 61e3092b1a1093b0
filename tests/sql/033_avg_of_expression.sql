-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate avg(Int64(2026) - person.year_of_birth): mean bounds [0, 126]; centred_sum Δ=63, count Δ=1
SELECT AVG(2026 - year_of_birth) AS age FROM person
