-- expect: refused join-on-unit
SELECT COUNT(*) FROM person, condition_occurrence
