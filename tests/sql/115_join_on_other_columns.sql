-- expect: refused join-on-unit
SELECT COUNT(*) FROM person p JOIN condition_occurrence c ON p.year_of_birth = c.condition_concept_id
