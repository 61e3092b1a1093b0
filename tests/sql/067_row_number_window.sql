-- expect: refused window-function
SELECT ROW_NUMBER() OVER (ORDER BY year_of_birth) FROM person
