-- expect: refused nondeterministic
SELECT COUNT(*) FROM person WHERE random() < 0.5
