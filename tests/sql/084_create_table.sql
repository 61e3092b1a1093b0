-- expect: refused single-select
CREATE TABLE x (a INT)
