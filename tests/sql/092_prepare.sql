-- expect: refused single-select
PREPARE q AS SELECT COUNT(*) FROM person
