# Joins: inner joins of patient tables on the privacy unit only

== join on units
SELECT COUNT(*) FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== join aliases group
SELECT p.gender_concept_id AS sex, COUNT(*) AS n FROM person AS p INNER JOIN measurement AS m ON m.person_id = p.person_id GROUP BY p.gender_concept_id
-> accepted
   tables: person (≤ 1 per patient), measurement (≤ 100 per patient)
   rows per patient: 100
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: count of rows; rows Δ 100

== three table join
SELECT COUNT(DISTINCT p.person_id) FROM person p JOIN condition_occurrence c ON c.person_id = p.person_id JOIN measurement m ON m.person_id = p.person_id WHERE c.condition_source_value LIKE 'E11%'
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient), measurement (≤ 100 per patient)
   rows per patient: 100
   groups: none
   aggregate 1: count of patients; patients Δ 1

== cross join
SELECT COUNT(*) FROM person, condition_occurrence
-> refused join-on-unit

== join on other columns
SELECT COUNT(*) FROM person p JOIN condition_occurrence c ON p.year_of_birth = c.condition_concept_id
-> refused join-on-unit

== left join
SELECT COUNT(*) FROM person p LEFT JOIN condition_occurrence c ON p.person_id = c.person_id
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40

== join unit plus condition
SELECT COUNT(*) FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id AND p.year_of_birth > 1950
-> refused join-on-unit

== self join
SELECT COUNT(*) FROM person a JOIN person b USING (person_id)
-> refused self-join
