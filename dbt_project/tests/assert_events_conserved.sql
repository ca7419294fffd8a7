-- Every raw.events row is either a valid event or quarantined, exactly once:
-- count(fct_events) + count(events_quarantine) = count(raw.events). Returns a row on violation.
{{ ltvrec_rows_conserved(source('raw', 'events'), ref('fct_events'), ref('events_quarantine')) }}
