-- expect: refused join-on-unit
SELECT COUNT(*) FROM person p LEFT JOIN condition_occurrence c ON p.person_id = c.person_id
