-- expect: refused unbounded-value
SELECT SUM(gender_concept_id) FROM person
