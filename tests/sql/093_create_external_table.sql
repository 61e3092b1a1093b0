-- expect: refused single-select
CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd'
