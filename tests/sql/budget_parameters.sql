# Budget parameters: ε within the steward's per-query cap, δ within (0, 1e-3], accuracy targets

== epsilon zero [epsilon=0]
SELECT COUNT(*) FROM person
-> refused epsilon

== epsilon over the per-query cap [epsilon=5]
SELECT COUNT(*) FROM person
-> refused epsilon

== delta out of range [delta=0.01]
SELECT condition_source_value, COUNT(*) FROM condition_occurrence GROUP BY 1
-> refused delta

== accuracy target must be positive [target-ci=-1]
SELECT COUNT(*) FROM person
-> refused target-ci

== accuracy target applies to counts and sums [target-ci=5]
SELECT AVG(year_of_birth) FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: mean of person.year_of_birth in [1900, 2026]; centred sum Δ 63, values Δ 1

== accuracy target on a count [target-ci=10]
SELECT COUNT(*) FROM person
-> accepted
   tables: person (≤ 1 per patient)
   rows per patient: 1
   groups: none
   aggregate 1: count of rows; rows Δ 1
