-- expect: refused count-distinct
SELECT COUNT(DISTINCT year_of_birth) FROM person
