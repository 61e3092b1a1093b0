-- expect: refused table-reference
SELECT COUNT(*) FROM public.person
