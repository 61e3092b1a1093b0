-- expect: refused unit-or-identifier
SELECT person_id AS x, COUNT(*) FROM person GROUP BY x
