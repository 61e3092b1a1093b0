-- expect: refused literal-argument
SELECT COUNT(*) FROM condition_occurrence WHERE date_trunc(condition_source_value, condition_start_date) IS NULL
