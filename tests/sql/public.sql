# Public tables: the OMOP vocabularies hold no patient. They are read at no privacy cost, joined to
# patient tables to name and roll up codes, and give group keys; a join to them may multiply a
# patient's rows, so the joined rows are truncated to the query's bound after the joins. A public
# table joined on a patient's unit or identifier would copy a patient column into a public row:
# refused.

== roll-up through concept_ancestor, counted by patient
SELECT c.concept_name, COUNT(DISTINCT co.person_id) FROM condition_occurrence co JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id JOIN concept c ON c.concept_id = ca.ancestor_concept_id WHERE ca.ancestor_concept_id IN (201826, 316866) GROUP BY 1
-> accepted
   tables: condition_occurrence (≤ 40 per patient), concept_ancestor (public), concept (public)
   public joins may repeat a patient's rows: truncated to 40 per patient after the joins
   rows per patient: 40
   groups: public domain of concept.concept_name (72 keys)
   aggregate 1: count of patients; patients Δ 40

== rows of a roll-up
SELECT ca.ancestor_concept_id, COUNT(*) FROM condition_occurrence co JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id WHERE ca.ancestor_concept_id IN (201820, 316866) GROUP BY 1
-> accepted
   tables: condition_occurrence (≤ 40 per patient), concept_ancestor (public)
   public joins may repeat a patient's rows: truncated to 40 per patient after the joins
   rows per patient: 40
   groups: public domain of concept_ancestor.ancestor_concept_id (2 keys)
   aggregate 1: count of rows; rows Δ 40

== naming codes: group keys from the concept table
SELECT c.concept_name, COUNT(*) FROM condition_occurrence co JOIN concept c ON c.concept_id = co.condition_concept_id GROUP BY 1
-> accepted
   tables: condition_occurrence (≤ 40 per patient), concept (public)
   public joins may repeat a patient's rows: truncated to 40 per patient after the joins
   rows per patient: 40
   groups: public domain of concept.concept_name (72 keys)
   aggregate 1: count of rows; rows Δ 40

== a concept column's domain gives the keys
SELECT condition_concept_id, COUNT(*) FROM condition_occurrence GROUP BY 1
-> accepted
   tables: condition_occurrence (≤ 40 per patient)
   rows per patient: 40
   groups: public domain of condition_occurrence.condition_concept_id (34 keys)
   aggregate 1: count of rows; rows Δ 40

== keys narrowed by a WHERE on the public table
SELECT c.concept_name, COUNT(*) FROM drug_exposure d JOIN concept c ON c.concept_id = d.drug_concept_id WHERE c.vocabulary_id = 'RxNorm' GROUP BY 1
-> accepted
   tables: drug_exposure (≤ 40 per patient), concept (public)
   public joins may repeat a patient's rows: truncated to 40 per patient after the joins
   rows per patient: 40
   groups: public domain of concept.concept_name (10 keys)
   aggregate 1: count of rows; rows Δ 40

== a sum over rows multiplied by a roll-up
SELECT SUM(m.value_as_number) FROM measurement m JOIN concept_ancestor ca ON ca.descendant_concept_id = m.measurement_concept_id
-> accepted
   tables: measurement (≤ 100 per patient), concept_ancestor (public)
   public joins may repeat a patient's rows: truncated to 100 per patient after the joins
   rows per patient: 100
   groups: none
   aggregate 1: sum of measurement.value_as_number in [0, 500]; sum Δ 50000

== a public table alone is read row by row through the vocabulary search, not SQL
SELECT COUNT(*) FROM concept
-> refused table-reference

== a public table joined on the patient's unit
SELECT COUNT(*) FROM person p JOIN concept c ON c.concept_id = p.person_id
-> refused unit-or-identifier

== a public table joined on a record identifier
SELECT COUNT(*) FROM condition_occurrence co JOIN concept c ON c.concept_id = co.visit_occurrence_id
-> refused unit-or-identifier

== a public column compared with the unit in WHERE
SELECT COUNT(*) FROM person p, concept c WHERE c.concept_id = p.person_id
-> refused join-on-unit
