-- expect: refused unit-or-identifier
SELECT SUM(person_id) FROM person
