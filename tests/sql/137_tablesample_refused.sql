-- expect: refused unsupported-syntax
-- DataFusion parses TABLESAMPLE and drops it: the "sample" would be the whole table.
SELECT COUNT(*) FROM person TABLESAMPLE SYSTEM (1)
