-- expect: refused sql-error
SELECT COUNT(nir) FROM person
