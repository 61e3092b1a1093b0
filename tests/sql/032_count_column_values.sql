-- expect: accepted
-- | tables: person
-- | rows per patient: 1
-- | groups: none
-- | aggregate count(person.department): count_values; count Δ=1
SELECT COUNT(department) FROM person
