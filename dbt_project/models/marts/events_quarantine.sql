-- Grain: one row per rejected raw.events row (source_row), with the raw values as read.
with rejected as (

    select source_row, reject_reason
    from {{ ref('int_events_checked') }}
    where reject_reason is not null

),

raw_events as (

    select * from {{ source('raw', 'events') }}

)

select
    raw_events.user_id,
    raw_events.item_id,
    raw_events.event_type,
    raw_events.event_ts,
    raw_events.quantity,
    raw_events.unit_price,
    raw_events.source_file,
    raw_events.source_row,
    rejected.reject_reason
from raw_events
inner join rejected
    on rejected.source_row = raw_events.source_row
