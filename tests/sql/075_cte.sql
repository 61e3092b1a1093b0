-- expect: refused subquery
WITH t AS (SELECT * FROM person) SELECT COUNT(*) FROM t
