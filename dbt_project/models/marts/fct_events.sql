-- Grain: one row per valid event (event_id = source_row of the input file).
with valid_events as (

    select * from {{ ref('int_events_checked') }}
    where reject_reason is null and not is_deferred

)

select
    source_row                                     as event_id,
    user_id,
    item_id,
    event_type,
    event_ts,
    quantity,
    -- only views and ratings can be valid without a price; they carry no spend
    cast(coalesce(unit_price, 0) as double precision) as unit_price,
    cast(
        case event_type
            when 'purchase' then quantity * coalesce(unit_price, 0)
            when 'return' then -(quantity * coalesce(unit_price, 0))
            else 0
        end
    as double precision)                           as amount
from valid_events
