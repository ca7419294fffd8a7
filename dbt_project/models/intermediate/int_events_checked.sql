-- Grain: one row per staged event (source_row), valid, deferred or not. An event at or after var defer_from (and
-- not in the future) belongs to a later run: is_deferred, never rejected here. reject_reason is NULL for valid
-- and deferred rows, otherwise the FIRST failing check in the order below. Only rows that pass every other check compete
-- for `duplicate`: among exact copies (user_id, item_id, event_type, event_ts, quantity, unit_price,
-- a NULL view/rating price counting as 0) the lowest source_row is kept. The event types are the vars
-- event_types (clean) and raw_only_event_types (accepted raw, always rejected), both from ltvrec.config.
{%- set event_types = ltvrec_event_types('event_types') %}
{%- set raw_only_event_types = ltvrec_event_types('raw_only_event_types') %}
with events as (

    select * from {{ ref('stg_events') }}

),

catalogue as (

    select item_id from {{ ref('int_items_deduped') }}

),

params as (

    select
        {{ ltvrec_as_of_date(ref('stg_events')) }} as as_of_date,
        {{ ltvrec_min_event_ts() }}                as min_event_ts,
        {{ ltvrec_defer_from() }}                  as defer_from_ts

),

prepared as (

    select
        events.*,
        -- views and ratings carry no spend: a missing price means 0
        case
            when events.event_type in ('view', 'rating') then coalesce(events.unit_price, 0)
            else events.unit_price
        end                                                    as checked_unit_price,
        catalogue.item_id is not null                          as is_known_item,
        params.min_event_ts,
        params.defer_from_ts,
        cast(params.as_of_date as timestamp) + interval '1 day' as future_from_ts
    from events
    cross join params
    left join catalogue
        on catalogue.item_id = events.item_id

),

checked as (

    select
        *,
        case
            -- a later run's event: that run checks it
            when event_ts >= defer_from_ts and event_ts < future_from_ts then 'deferred'
            when user_id is null then 'missing_user_id'
            when item_id is null then 'missing_item_id'
            when event_type is null
                or event_type not in {{ ltvrec_sql_list(event_types + raw_only_event_types) }}
                then 'invalid_event_type'
            -- a raw-only type (Online Retail's fees: non_product) is rejected under its own name
            when event_type in {{ ltvrec_sql_list(raw_only_event_types) }} then event_type
            when event_ts is null then 'missing_timestamp'
            when event_ts < min_event_ts then 'timestamp_before_min'
            when event_ts >= future_from_ts then 'timestamp_in_future'
            when quantity is null
                or quantity <= 0
                or quantity > {{ ltvrec_number_var('max_quantity', 10000) }}
                then 'invalid_quantity'
            when checked_unit_price is null
                or checked_unit_price < 0
                or checked_unit_price > {{ ltvrec_number_var('max_unit_price', 100000) }}
                then 'invalid_price'
            when not is_known_item then 'unknown_item'
        end as check_reason
    from prepared

),

ranked as (

    select
        *,
        row_number() over (
            partition by check_reason, user_id, item_id, event_type, event_ts, quantity, checked_unit_price
            order by source_row
        ) as copy_rank
    from checked

)

select
    source_row,
    source_file,
    user_id,
    item_id,
    event_type,
    event_ts,
    quantity,
    unit_price,
    case
        when check_reason = 'deferred' then null
        when check_reason is not null then check_reason
        when copy_rank > 1 then 'duplicate'
    end as reject_reason,
    coalesce(check_reason = 'deferred', false) as is_deferred
from ranked
