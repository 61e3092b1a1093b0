-- expect: accepted
-- | tables: drug_exposure
-- | rows per patient: 20
-- | groups: none
-- | aggregate stddev_pop(drug_exposure.quantity): stddev_pop bounds [0, 1000]; centred_sum Δ=10000, centred_sum_of_squares Δ=5000000, count Δ=20
SELECT STDDEV_POP(quantity) FROM drug_exposure
