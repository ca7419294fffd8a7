-- Grain: one row per raw.items row (item_id may repeat; see int_items). Rename/cast only.
with source as (

    select * from {{ source('raw', 'items') }}

)

select
    nullif(trim(cast(item_id as varchar)), '')  as item_id,
    nullif(trim(cast(title as varchar)), '')    as title,
    nullif(trim(cast(category as varchar)), '') as category,
    cast(price as double precision)             as price,
    cast(in_stock as boolean)                   as in_stock
from source
