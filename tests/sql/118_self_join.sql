-- expect: refused self-join
SELECT COUNT(*) FROM person a JOIN person b USING (person_id)
