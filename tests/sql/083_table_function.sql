-- expect: refused table-reference
SELECT COUNT(*) FROM generate_series(1, 10)
