-- expect: refused min-max
SELECT MAX(person_id) FROM person
