# The privacy unit and identifiers: only in joins and COUNT(DISTINCT person_id)

== unit in group by
SELECT person_id, COUNT(*) FROM person GROUP BY person_id
-> refused unit-or-identifier

== alias hides unit
SELECT person_id AS x, COUNT(*) FROM person GROUP BY x
-> refused unit-or-identifier

== unit inside expression
SELECT person_id + 0 AS k, COUNT(*) FROM person GROUP BY 1
-> refused unit-or-identifier

== unit modulo buckets
SELECT person_id % 10 AS bucket, COUNT(*) FROM person GROUP BY 1
-> refused unit-or-identifier

== unit in case
SELECT CASE WHEN person_id > 0 THEN 1 ELSE 0 END AS g, COUNT(*) FROM person GROUP BY 1
-> refused unit-or-identifier

== unit in where
SELECT COUNT(*) FROM person WHERE person_id = 123456789
-> refused unit-or-identifier

== identifier in where
SELECT COUNT(*) FROM condition_occurrence WHERE visit_occurrence_id > 0
-> refused unit-or-identifier

== identifier group by
SELECT visit_occurrence_id, COUNT(*) FROM condition_occurrence GROUP BY 1
-> refused unit-or-identifier

== sum of unit
SELECT SUM(person_id) FROM person
-> refused unit-or-identifier

== avg unit times zero
SELECT AVG(person_id * 0) FROM person
-> refused unit-or-identifier

== quoted unit alias
SELECT "person_id" AS "Gender", COUNT(*) FROM person GROUP BY 1
-> refused unit-or-identifier
