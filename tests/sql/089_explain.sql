-- expect: refused single-select
EXPLAIN SELECT COUNT(*) FROM person
