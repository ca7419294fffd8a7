-- Grain: one row per staged catalogue row (source_row), kept or not. reject_reason is NULL for the row kept for
-- its item_id (its lowest source_row); otherwise missing_item_id, duplicate_item (an exact copy of an earlier
-- row: item_id, title, category, price, in_stock) or conflicting_item (an earlier row has the item_id, with other
-- values). NULLs compare equal here: two rows without a title are copies.
with items as (

    select * from {{ ref('stg_items') }}

),

ranked as (

    select
        *,
        row_number() over (partition by item_id order by source_row) as id_rank,
        row_number() over (
            partition by item_id, title, category, price, in_stock
            order by source_row
        ) as copy_rank
    from items

)

select
    source_row,
    source_file,
    item_id,
    title,
    category,
    price,
    in_stock,
    case
        when item_id is null then 'missing_item_id'
        when copy_rank > 1 then 'duplicate_item'
        when id_rank > 1 then 'conflicting_item'
    end as reject_reason
from ranked
