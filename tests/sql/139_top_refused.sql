-- expect: refused unsupported-syntax
SELECT TOP 3 gender_concept_id, COUNT(*) FROM person GROUP BY 1
