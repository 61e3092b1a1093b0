-- expect: refused subquery
SELECT COUNT(*) FROM (VALUES (1), (2)) AS t (a)
