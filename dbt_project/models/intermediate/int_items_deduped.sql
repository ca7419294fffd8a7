-- Grain: one row per item_id in the catalogue (rows without an item_id are dropped).
-- Duplicated ids keep one row, deterministically: non-NULL title first, then title, category, price.
with items as (

    select * from {{ ref('stg_items') }}
    where item_id is not null

),

ranked as (

    select
        item_id,
        title,
        category,
        price,
        in_stock,
        row_number() over (
            partition by item_id
            order by
                case when title is null then 1 else 0 end,
                title nulls last,
                category nulls last,
                price nulls last
        ) as item_rank
    from items

)

select
    item_id,
    title,
    category,
    price,
    in_stock
from ranked
where item_rank = 1
