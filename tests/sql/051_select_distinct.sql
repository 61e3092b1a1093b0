-- expect: refused aggregate-required
SELECT DISTINCT gender_concept_id FROM person
