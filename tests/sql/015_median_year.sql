-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate median(person.year_of_birth): quantile(0.5) bounds [1900, 2026]; quantile Δ=1
SELECT MEDIAN(year_of_birth) FROM person
