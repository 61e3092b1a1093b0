-- expect: refused min-max
SELECT gender_concept_id, COUNT(*) FROM person GROUP BY 1 HAVING MIN(year_of_birth) > 1900
