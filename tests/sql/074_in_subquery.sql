-- expect: refused subquery
SELECT COUNT(*) FROM person WHERE person_id IN (SELECT person_id FROM condition_occurrence)
