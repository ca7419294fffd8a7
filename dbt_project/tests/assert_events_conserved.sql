-- Every raw.events row is valid, quarantined or deferred to a later run (var defer_from), exactly once:
-- count(fct_events) + count(events_quarantine) + deferred = count(raw.events). Returns a row on violation.
{{ ltvrec_rows_conserved(source('raw', 'events'), ref('fct_events'), ref('events_quarantine'),
                         ref('int_events_checked')) }}
