-- expect: accepted
-- | tables: drug_exposure
-- | rows per patient: 20
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=20
SELECT COUNT(*) FROM drug_exposure WHERE drug_source_value LIKE 'A10%'
