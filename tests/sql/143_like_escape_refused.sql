-- expect: refused unsupported-expression
SELECT COUNT(*) FROM condition_occurrence WHERE condition_source_value LIKE 'E1!%' ESCAPE '!'
