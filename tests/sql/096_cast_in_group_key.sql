-- expect: refused unsafe-expression
SELECT CAST(department AS INT) AS d, COUNT(*) FROM person GROUP BY 1
