# Aggregates: what is counted, summed and averaged, with which sensitivity; and the aggregates refused

== count star
SELECT COUNT(*) FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== patients join using
SELECT COUNT(DISTINCT person_id) FROM person JOIN condition_occurrence USING (person_id)
-> accepted
   tables: person (≤ 1 per patient), condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of patients; patients Δ 1

== avg year of birth
SELECT AVG(year_of_birth) FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: mean of person.year_of_birth in [1900, 2026]; centred sum Δ 63, values Δ 1

== median year
SELECT MEDIAN(year_of_birth) FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: median of person.year_of_birth in [1900, 2026]; quantile Δ 1

== percentile within group
SELECT approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY value_as_number) FROM measurement WHERE value_as_number BETWEEN 0 AND 50
-> accepted
   tables: measurement (≤ 100 per patient)
   rows per patient: 100
   groups: none
   aggregate 1: 0.9-quantile of measurement.value_as_number in [0, 50]; quantile Δ 100

== variance and stddev
SELECT VAR_SAMP(year_of_birth), STDDEV(year_of_birth) FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: sample variance of person.year_of_birth in [1900, 2026]; centred sum Δ 63, centred sum of squares Δ 3969, values Δ 1
   aggregate 2: sample standard deviation of person.year_of_birth in [1900, 2026]; centred sum Δ 63, centred sum of squares Δ 3969, values Δ 1

== several aggregates
SELECT COUNT(*), COUNT(DISTINCT person_id), SUM(days_supply), AVG(quantity) FROM drug_exposure
-> accepted
   tables: drug_exposure (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: count of rows; rows Δ 40
   aggregate 2: count of patients; patients Δ 1
   aggregate 3: sum of drug_exposure.days_supply in [0, 365]; sum Δ 14600
   aggregate 4: mean of drug_exposure.quantity in [0, 1000]; centred sum Δ 20000, values Δ 40

== count column values
SELECT COUNT(department) FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of values of person.department; values Δ 1

== quoted alias output
SELECT COUNT(*) AS "N patients" FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1

== sum days supply
SELECT SUM(days_supply) FROM drug_exposure
-> accepted
   tables: drug_exposure (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: sum of drug_exposure.days_supply in [0, 365]; sum Δ 14600

== stddev pop
SELECT STDDEV_POP(quantity) FROM drug_exposure
-> accepted
   tables: drug_exposure (≤ 40 per patient)
   rows per patient: 40
   groups: none
   aggregate 1: population standard deviation of drug_exposure.quantity in [0, 1000]; centred sum Δ 20000, centred sum of squares Δ 10000000, values Δ 40

== min raw
SELECT MIN(year_of_birth) FROM person
-> refused min-max

== max unit
SELECT MAX(person_id) FROM person
-> refused min-max

== min in having
SELECT gender_concept_id, COUNT(*) FROM person GROUP BY 1 HAVING MIN(year_of_birth) > 1900
-> refused min-max

== count distinct non unit
SELECT COUNT(DISTINCT year_of_birth) FROM person
-> refused count-distinct

== sum distinct
SELECT SUM(DISTINCT year_of_birth) FROM person
-> refused unsupported-aggregate

== sum unbounded
SELECT SUM(gender_concept_id) FROM person
-> refused unbounded-value

== quantile unbounded
SELECT MEDIAN(condition_concept_id) FROM condition_occurrence
-> refused unbounded-value

== array agg
SELECT array_agg(year_of_birth) FROM person
-> refused unsupported-aggregate

== percentile not literal
SELECT approx_percentile_cont(year_of_birth / 3000.0) WITHIN GROUP (ORDER BY year_of_birth) FROM person
-> refused unsupported-aggregate

== aggregate filter clause
SELECT COUNT(*) FILTER (WHERE year_of_birth > 1950) FROM person
-> refused aggregate-filter
