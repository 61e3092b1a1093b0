-- expect: refused unsafe-expression
SELECT COUNT(*) FROM condition_occurrence WHERE substr(condition_source_value, 1, -1) = ''
