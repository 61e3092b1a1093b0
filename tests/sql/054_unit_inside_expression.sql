-- expect: refused unit-or-identifier
SELECT person_id + 0 AS k, COUNT(*) FROM person GROUP BY 1
