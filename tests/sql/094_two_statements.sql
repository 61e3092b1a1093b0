-- expect: refused single-select
SELECT COUNT(*) FROM person; SELECT COUNT(*) FROM person
