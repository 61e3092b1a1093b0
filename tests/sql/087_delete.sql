-- expect: refused single-select
DELETE FROM person
