-- expect: refused sql-syntax
SELEC COUNT(*) FROM person
