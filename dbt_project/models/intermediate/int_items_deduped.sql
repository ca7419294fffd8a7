-- Grain: one row per item_id of the catalogue: the row int_items_checked keeps (the item's first row).
select
    item_id,
    title,
    category,
    price,
    in_stock
from {{ ref('int_items_checked') }}
where reject_reason is null
