-- expect: refused unsafe-expression
SELECT COUNT(*) FROM person WHERE year_of_birth % gender_concept_id = 0
