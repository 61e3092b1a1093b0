# Query shape: one aggregate over the tables; no row-level output, subqueries, windows or set operations

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

== subquery in from
SELECT COUNT(*) FROM (SELECT * FROM person WHERE year_of_birth > 1950) t
-> refused subquery

== limit below aggregate
SELECT COUNT(*) FROM (SELECT * FROM person LIMIT 10) t
-> refused limit-below-aggregate

== scalar subquery
SELECT COUNT(*) FROM person WHERE year_of_birth > (SELECT AVG(year_of_birth) FROM person)
-> refused subquery

== exists subquery
SELECT COUNT(*) FROM person p WHERE EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = p.person_id)
-> refused subquery

== in subquery
SELECT COUNT(*) FROM person WHERE person_id IN (SELECT person_id FROM condition_occurrence)
-> refused subquery

== cte
WITH t AS (SELECT * FROM person) SELECT COUNT(*) FROM t
-> refused subquery

== no from
SELECT 1
-> refused table-reference

== count without from
SELECT COUNT(*)
-> refused table-reference

== values in from
SELECT COUNT(*) FROM (VALUES (1), (2)) AS t (a)
-> refused subquery

== order by inside a subquery
SELECT COUNT(*) FROM (SELECT * FROM person ORDER BY year_of_birth) t
-> refused subquery
