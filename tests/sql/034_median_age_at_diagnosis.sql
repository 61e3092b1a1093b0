-- expect: accepted
-- | tables: person, condition_occurrence
-- | rows per patient: 10
-- | groups: none
-- | aggregate median(date_part(Utf8("YEAR"),condition_occurrence.condition_start_date) - person.year_of_birth): quantile(0.5) bounds [-36, 126]; quantile Δ=10
SELECT MEDIAN(EXTRACT(YEAR FROM condition_start_date) - year_of_birth) FROM person JOIN condition_occurrence USING (person_id) WHERE condition_source_value LIKE 'E11%'
