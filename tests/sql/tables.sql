# Tables and columns: the project's tables by plain name, stored columns only

== table not in project
SELECT COUNT(*) FROM death
-> refused table-not-in-project

== file path table
SELECT COUNT(*) FROM '/etc/passwd'
-> refused table-reference

== url table
SELECT COUNT(*) FROM 'https://example.org/patients.parquet'
-> refused table-reference

== parquet file table
SELECT COUNT(*) FROM 'tables/person/part-0.parquet'
-> refused table-reference

== schema qualified
SELECT COUNT(*) FROM public.person
-> refused table-reference

== information schema
SELECT COUNT(*) FROM information_schema.tables
-> refused table-reference

== quoted wrong case table
SELECT COUNT(*) FROM "Person"
-> refused table-reference

== table function
SELECT COUNT(*) FROM generate_series(1, 10)
-> refused table-reference

== stored identifier dropped
SELECT COUNT(nir) FROM person
-> refused unknown-column

== unknown column
SELECT AVG(salary) FROM person
-> refused unknown-column

== nested aggregate
SELECT SUM(COUNT(*)) FROM person
-> refused sql-error
