-- expect: refused single-select
DROP TABLE person
