-- expect: refused table-reference
SELECT 1
