-- expect: refused nondeterministic
SELECT gender_concept_id, COUNT(*) FROM person GROUP BY 1 ORDER BY random()
