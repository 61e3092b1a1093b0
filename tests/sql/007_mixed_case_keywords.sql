-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=1
SeLeCt CoUnT(*) FrOm PeRsOn WhErE YEAR_OF_BIRTH > 1950
