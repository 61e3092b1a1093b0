-- expect: refused table-reference
SELECT COUNT(*) FROM information_schema.tables
