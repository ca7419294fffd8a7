-- Grain: one row per raw.items row (item_id may repeat; see int_items_checked). Rename/cast only.
with source as (

    {{ ltvrec_raw_rows('items') }}

)

select
    cast(source_row as bigint)                  as source_row,
    cast(source_file as varchar)                as source_file,
    nullif(trim(cast(item_id as varchar)), '')  as item_id,
    nullif(trim(cast(title as varchar)), '')    as title,
    nullif(trim(cast(category as varchar)), '') as category,
    cast(price as double precision)             as price,
    cast(in_stock as boolean)                   as in_stock
from source
