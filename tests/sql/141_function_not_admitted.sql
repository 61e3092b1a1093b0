-- expect: refused unsupported-function
-- repeat() can build a string whose size depends on a value: not admitted.
SELECT COUNT(*) FROM person WHERE repeat(department, year_of_birth) = ''
