-- expect: refused unsupported-aggregate
SELECT approx_percentile_cont(year_of_birth / 3000.0) WITHIN GROUP (ORDER BY year_of_birth) FROM person
