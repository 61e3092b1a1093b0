-- expect: refused unsupported-expression
-- Decimal casts have no total kernel: not admitted.
SELECT COUNT(*) FROM person WHERE CAST(year_of_birth AS DECIMAL(3, 0)) > 0
