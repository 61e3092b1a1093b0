-- expect: refused set-operation
SELECT COUNT(*) FROM person UNION SELECT COUNT(*) FROM condition_occurrence
