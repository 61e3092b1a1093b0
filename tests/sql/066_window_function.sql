-- expect: refused window-function
SELECT COUNT(*) OVER () FROM person
