-- expect: refused unit-or-identifier
SELECT COUNT(*) FROM condition_occurrence WHERE condition_occurrence_id > 0
