-- expect: accepted
-- | tables: person, condition_occurrence
-- | rows per patient: 10
-- | groups: none
-- | aggregate count(Int64(1)): count_rows; count Δ=10
-- The second published oracle: integer overflow wraps, abs of the wrapped minimum raised an
-- error. Overflow now gives NULL and abs is total.
SELECT COUNT(*) FROM person JOIN condition_occurrence USING (person_id)
WHERE abs(CASE WHEN year_of_birth = 1994 AND condition_source_value = 'E11.9' THEN 4611686018427387904 * 2 ELSE 0 END) >= 0
