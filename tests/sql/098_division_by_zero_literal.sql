-- expect: refused unsafe-expression
SELECT COUNT(*) FROM person WHERE year_of_birth / 0 > 1
