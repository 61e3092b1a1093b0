-- expect: refused unsupported-aggregate
SELECT SUM(DISTINCT year_of_birth) FROM person
