-- Grain: one row per rejected raw.events row (source_row), with the raw values as read and its reject_reason.
{{ ltvrec_quarantined_rows(ref('int_events_checked'), ltvrec_raw_rows('events')) }}
