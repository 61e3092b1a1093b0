-- expect: refused unit-or-identifier
SELECT CASE WHEN person_id > 0 THEN 1 ELSE 0 END AS g, COUNT(*) FROM person GROUP BY 1
