-- expect: refused unit-or-identifier
SELECT COUNT(*) FROM person WHERE person_id = 123456789
