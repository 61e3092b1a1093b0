# Statements: one SELECT, parsed as written; nothing the engine would drop silently

== mixed case keywords
SeLeCt CoUnT(*) FrOm PeRsOn WhErE YEAR_OF_BIRTH > 1950
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== quoted identifiers
SELECT "gender_concept_id", COUNT(*) FROM "person" GROUP BY "gender_concept_id"
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: count of rows; rows Δ 1

== comments inline and block
SELECT /* a block comment */ COUNT(*) -- a line comment
FROM person -- another
WHERE year_of_birth >= 1960
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== create table
CREATE TABLE x (a INT)
-> refused single-select

== drop table
DROP TABLE person
-> refused single-select

== insert
INSERT INTO person VALUES (1)
-> refused single-select

== delete
DELETE FROM person
-> refused single-select

== copy to file
COPY person TO '/tmp/person.csv'
-> refused single-select

== explain
EXPLAIN SELECT COUNT(*) FROM person
-> refused single-select

== explain analyze
EXPLAIN ANALYZE SELECT COUNT(*) FROM person
-> refused single-select

== set variable
SET datafusion.execution.batch_size = 1
-> refused single-select

== prepare
PREPARE q AS SELECT COUNT(*) FROM person
-> refused single-select

== create external table
CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd'
-> refused single-select

== two statements
SELECT COUNT(*) FROM person; SELECT COUNT(*) FROM person
-> refused single-select

== sql too long [pad-to=70000]
SELECT COUNT(*) FROM person WHERE year_of_birth > 1950
-> refused sql-too-long

== syntax error
SELEC COUNT(*) FROM person
-> refused sql-syntax

== tablesample refused
-- DataFusion parses TABLESAMPLE and drops it: the "sample" would be the whole table.
SELECT COUNT(*) FROM person TABLESAMPLE SYSTEM (1)
-> refused unsupported-syntax

== tablesample in join refused
SELECT COUNT(*) FROM person JOIN condition_occurrence TABLESAMPLE BERNOULLI (50) USING (person_id)
-> refused unsupported-syntax

== top refused
SELECT TOP 3 gender_concept_id, COUNT(*) FROM person GROUP BY 1
-> refused unsupported-syntax
