-- expect: refused unsupported-grouping
SELECT gender_concept_id, COUNT(*) FROM person GROUP BY ROLLUP (gender_concept_id)
