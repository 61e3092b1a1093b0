-- expect: refused table-reference
SELECT COUNT(*)
