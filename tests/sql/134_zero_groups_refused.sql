-- expect: refused max-groups
-- max-groups: 0
SELECT condition_concept_id, COUNT(*) FROM condition_occurrence GROUP BY 1
