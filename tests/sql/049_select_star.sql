-- expect: refused aggregate-required
SELECT * FROM person
