-- expect: refused table-reference
SELECT COUNT(*) FROM 'tables/person/part-0.parquet'
