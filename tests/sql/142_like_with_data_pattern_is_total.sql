-- expect: accepted
-- | tables: condition_occurrence
-- | rows per patient: 10
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=10
-- A pattern built from the data: total (a pattern that does not compile would give NULL).
SELECT COUNT(*) FROM condition_occurrence WHERE condition_source_value LIKE (condition_source_value || '%')
