-- expect: accepted
-- | tables: drug_exposure
-- | rows per patient: 20
-- | groups: none
-- | aggregate sum(drug_exposure.days_supply): sum bounds [0, 365]; sum Δ=7300
SELECT SUM(days_supply) FROM drug_exposure
