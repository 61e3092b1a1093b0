-- expect: refused unsafe-expression
SELECT COUNT(*) FROM condition_occurrence WHERE CAST(condition_source_value AS INT) > 5
