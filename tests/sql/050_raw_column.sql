-- expect: refused aggregate-required
SELECT year_of_birth FROM person
