-- expect: refused unit-or-identifier
SELECT person_id % 10 AS bucket, COUNT(*) FROM person GROUP BY 1
