-- expect: accepted
-- | tables: measurement
-- | rows per patient: 20
-- | groups: none
-- | aggregate approx_percentile_cont(Float64(0.9)) WITHIN GROUP [measurement.value_as_number ASC NULLS LAST]: quantile(0.9) bounds [0, 50]; quantile Δ=20
SELECT approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 50
