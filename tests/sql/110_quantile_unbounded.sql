-- expect: refused unbounded-value
SELECT MEDIAN(condition_concept_id) FROM condition_occurrence
