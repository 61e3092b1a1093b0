-- expect: refused subquery
SELECT COUNT(*) FROM (SELECT * FROM person WHERE year_of_birth > 1950) t
