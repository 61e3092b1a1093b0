-- expect: refused table-reference
SELECT COUNT(*) FROM "Person"
