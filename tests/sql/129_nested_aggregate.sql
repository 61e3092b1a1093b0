-- expect: refused sql-error
SELECT SUM(COUNT(*)) FROM person
