-- expect: refused subquery
SELECT COUNT(*) FROM person WHERE year_of_birth > (SELECT AVG(year_of_birth) FROM person)
