-- expect: refused needs-delta
SELECT substr(condition_source_value, 1, 3) AS chapter, COUNT(*) FROM condition_occurrence GROUP BY 1
