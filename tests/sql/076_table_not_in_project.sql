-- expect: refused table-not-in-project
SELECT COUNT(*) FROM death
