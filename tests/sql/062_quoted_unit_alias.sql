-- expect: refused unit-or-identifier
SELECT "person_id" AS "Gender", COUNT(*) FROM person GROUP BY 1
