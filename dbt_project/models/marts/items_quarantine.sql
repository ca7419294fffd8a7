-- Grain: one row per rejected raw.items row (source_row), with the raw values as read and its reject_reason.
{{ ltvrec_quarantined_rows(ref('int_items_checked'), ltvrec_raw_rows('items')) }}
