# Post-processing: HAVING, ORDER BY, LIMIT and arithmetic over the noisy output

== having on noisy count
SELECT gender_concept_id, COUNT(*) AS n FROM person GROUP BY gender_concept_id HAVING COUNT(*) > 100
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: count of rows; rows Δ 1

== order by limit
SELECT year_of_birth, COUNT(*) AS n FROM person GROUP BY year_of_birth ORDER BY n DESC LIMIT 5
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.year_of_birth (127 keys)
   aggregate 1: count of rows; rows Δ 1

== order by alias desc
SELECT gender_concept_id AS sex, AVG(year_of_birth) AS mean_yob FROM person GROUP BY 1 ORDER BY mean_yob DESC
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: mean of person.year_of_birth in [1900, 2026]; centred sum Δ 63, values Δ 1

== having on avg
SELECT gender_concept_id, AVG(year_of_birth) FROM person GROUP BY 1 HAVING AVG(year_of_birth) > 1950
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: public domain of person.gender_concept_id (3 keys)
   aggregate 1: mean of person.year_of_birth in [1900, 2026]; centred sum Δ 63, values Δ 1

== output arithmetic on aggregate
SELECT COUNT(*) * 100 AS scaled FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1
