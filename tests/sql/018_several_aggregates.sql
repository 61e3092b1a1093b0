-- expect: accepted
-- | tables: drug_exposure
-- | rows per patient: 20
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=20
-- | aggregate count(DISTINCT drug_exposure.person_id): count_patients; patients Δ=1
-- | aggregate sum(drug_exposure.days_supply): sum bounds [0, 365]; sum Δ=7300
-- | aggregate avg(drug_exposure.quantity): mean bounds [0, 1000]; centred_sum Δ=10000, count Δ=20
SELECT COUNT(*), COUNT(DISTINCT person_id), SUM(days_supply), AVG(quantity) FROM drug_exposure
