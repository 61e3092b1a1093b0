-- expect: refused unit-or-identifier
SELECT person_id, COUNT(*) FROM person GROUP BY person_id
