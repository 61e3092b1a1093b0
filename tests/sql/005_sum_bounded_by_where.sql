-- expect: accepted
-- | tables: measurement
-- | rows per patient: 20
-- | groups: none
-- | aggregate sum(measurement.value_as_number): sum bounds [0, 20]; sum Δ=400
SELECT SUM(value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 20
