-- expect: refused single-select
EXPLAIN ANALYZE SELECT COUNT(*) FROM person
