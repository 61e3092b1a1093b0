-- expect: refused aggregate-filter
SELECT COUNT(*) FILTER (WHERE year_of_birth > 1950) FROM person
