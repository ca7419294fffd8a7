-- Every raw.items row is either the kept row of its item_id or quarantined, exactly once:
-- count(int_items_deduped) + count(items_quarantine) = count(raw.items). Returns a row on violation.
{{ ltvrec_rows_conserved(source('raw', 'items'), ref('int_items_deduped'), ref('items_quarantine')) }}
