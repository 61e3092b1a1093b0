-- expect: refused single-select
INSERT INTO person VALUES (1)
