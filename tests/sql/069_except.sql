-- expect: refused set-operation
SELECT COUNT(*) FROM person EXCEPT SELECT COUNT(*) FROM person WHERE year_of_birth > 1950
