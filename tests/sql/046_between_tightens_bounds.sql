-- expect: accepted
-- | tables: measurement
-- | rows per patient: 20
-- | groups: none
-- | aggregate avg(measurement.value_as_number): mean bounds [3, 15]; centred_sum Δ=120, count Δ=20
SELECT AVG(value_as_number) FROM measurement WHERE value_as_number >= 3 AND value_as_number <= 15
