-- expect: refused unit-or-identifier
SELECT AVG(person_id * 0) FROM person
