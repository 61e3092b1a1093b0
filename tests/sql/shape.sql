# Query shape: one aggregate over the tables; no row-level output, windows or set operations (subqueries: cohorts.sql)

== select star
SELECT * FROM person
-> refused aggregate-required

== raw column
SELECT year_of_birth FROM person
-> refused aggregate-required

== select distinct
SELECT DISTINCT gender_concept_id FROM person
-> refused aggregate-required

== window function
SELECT COUNT(*) OVER () FROM person
-> refused window-function

== row number window
SELECT ROW_NUMBER() OVER (ORDER BY year_of_birth) FROM person
-> refused window-function

== union
SELECT COUNT(*) FROM person UNION SELECT COUNT(*) FROM condition_occurrence
-> refused set-operation

== except
SELECT COUNT(*) FROM person EXCEPT SELECT COUNT(*) FROM person WHERE year_of_birth > 1950
-> refused set-operation

== limit below aggregate
SELECT COUNT(*) FROM (SELECT * FROM person LIMIT 10) t
-> refused limit-below-aggregate

== no from
SELECT 1
-> refused table-reference

== count without from
SELECT COUNT(*)
-> refused table-reference

== values in from
SELECT COUNT(*) FROM (VALUES (1), (2)) AS t (a)
-> refused table-reference

== order by inside a subquery
SELECT COUNT(*) FROM (SELECT * FROM person ORDER BY year_of_birth) t
-> refused per-patient-relation
