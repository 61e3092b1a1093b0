-- expect: refused table-reference
SELECT COUNT(*) FROM 'https://example.org/patients.parquet'
