-- Grain: one row per item_id found in the catalogue or in fct_events.
with catalogue as (

    select * from {{ ref('int_items_deduped') }}

),

events as (

    select * from {{ ref('fct_events') }}

),

event_stats as (

    select
        item_id,
        count(*)                as n_events,
        count(distinct user_id) as n_users,
        min(event_ts)           as first_seen_ts,
        max(event_ts)           as last_seen_ts
    from events
    group by item_id

),

observed_prices as (

    -- fallback price: median of the positive unit prices paid in purchases
    select
        item_id,
        percentile_cont(0.5) within group (order by unit_price) as median_unit_price
    from events
    where event_type = 'purchase'
        and unit_price > 0
    group by item_id

),

all_items as (

    select item_id from catalogue
    union
    select item_id from event_stats

)

select
    all_items.item_id,
    coalesce(catalogue.title, all_items.item_id)   as title,
    coalesce(catalogue.category, 'unknown')        as category,
    cast(
        case
            when catalogue.price > 0 then catalogue.price
            when observed_prices.median_unit_price > 0 then observed_prices.median_unit_price
            else 0
        end
    as double precision)                           as price,
    coalesce(catalogue.in_stock, true)             as in_stock,
    coalesce(event_stats.n_events, 0)              as n_events,
    coalesce(event_stats.n_users, 0)               as n_users,
    event_stats.first_seen_ts,
    event_stats.last_seen_ts
from all_items
left join catalogue
    on catalogue.item_id = all_items.item_id
left join event_stats
    on event_stats.item_id = all_items.item_id
left join observed_prices
    on observed_prices.item_id = all_items.item_id
