-- expect: refused unit-or-identifier
SELECT visit_occurrence_id, COUNT(*) FROM condition_occurrence GROUP BY 1
