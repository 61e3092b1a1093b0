-- expect: refused needs-delta
SELECT condition_source_value, COUNT(*) FROM condition_occurrence GROUP BY 1
