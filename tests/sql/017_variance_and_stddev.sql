-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate var(person.year_of_birth): var_samp bounds [1900, 2026]; centred_sum Δ=63, centred_sum_of_squares Δ=3969, count Δ=1
-- | aggregate stddev(person.year_of_birth): stddev_samp bounds [1900, 2026]; centred_sum Δ=63, centred_sum_of_squares Δ=3969, count Δ=1
SELECT VAR_SAMP(year_of_birth), STDDEV(year_of_birth) FROM person
