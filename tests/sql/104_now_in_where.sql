-- expect: refused nondeterministic
SELECT COUNT(*) FROM condition_occurrence WHERE condition_start_date < now()
