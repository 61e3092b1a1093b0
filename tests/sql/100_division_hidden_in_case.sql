-- expect: refused unsafe-expression
SELECT COUNT(*) FROM person WHERE CASE WHEN year_of_birth > 1950 THEN 1 / (year_of_birth - 1980) ELSE 0 END = 0
