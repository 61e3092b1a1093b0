-- expect: refused table-reference
SELECT COUNT(*) FROM '/etc/passwd'
