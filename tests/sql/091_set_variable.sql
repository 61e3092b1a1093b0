-- expect: refused single-select
SET datafusion.execution.batch_size = 1
