-- expect: refused unsupported-aggregate
SELECT array_agg(year_of_birth) FROM person
