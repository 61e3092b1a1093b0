-- expect: refused unsupported-syntax
SELECT COUNT(*) FROM person JOIN condition_occurrence TABLESAMPLE BERNOULLI (50) USING (person_id)
