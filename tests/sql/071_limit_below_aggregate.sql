-- expect: refused subquery
SELECT COUNT(*) FROM (SELECT * FROM person LIMIT 10) t
