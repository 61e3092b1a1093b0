-- expect: refused unsupported-function
SELECT COUNT(*) FROM condition_occurrence WHERE to_timestamp(condition_source_value) IS NULL
