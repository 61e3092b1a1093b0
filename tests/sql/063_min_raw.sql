-- expect: refused min-max
SELECT MIN(year_of_birth) FROM person
