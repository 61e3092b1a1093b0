-- expect: refused single-select
COPY person TO '/tmp/person.csv'
