-- expect: refused sql-error
SELECT AVG(salary) FROM person
