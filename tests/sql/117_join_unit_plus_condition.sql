-- expect: refused join-on-unit
SELECT COUNT(*) FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id AND p.year_of_birth > 1950
