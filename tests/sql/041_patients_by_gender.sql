-- expect: accepted
-- | tables: person, drug_exposure
-- | rows per patient: 20
-- | groups: public domain (2 keys)
-- | aggregate count(DISTINCT person.person_id): count_patients; patients Δ=1
SELECT gender_concept_id, COUNT(DISTINCT person_id) FROM person JOIN drug_exposure USING (person_id) GROUP BY 1
