-- Grain: one row per published recommendation (run_date, user_id, rank) from a run date before the end of this
-- load's clean events: what the user did with the item in the var outcome_days days from its run date, as far
-- as the events reach (window_complete once they cover the whole window). The events end on the day after the
-- latest clean one.
{%- set outcome_days = ltvrec_number_var('outcome_days', none) %}
with recommendations as (

    select * from {{ source('serving', 'recommendations') }}

),

events as (

    select * from {{ ref('fct_events') }}

),

params as (

    select {{ ltvrec_events_end(ref('fct_events')) }} as events_end_ts

),

windows as (

    select
        recommendations.run_date,
        recommendations.user_id,
        recommendations.rank,
        recommendations.item_id,
        recommendations.model_name,
        recommendations.model_version,
        cast(recommendations.run_date as timestamp)                         as window_start_ts,
        cast(recommendations.run_date + {{ outcome_days }} as timestamp)    as window_end_ts,
        params.events_end_ts
    from recommendations
    cross join params
    where cast(recommendations.run_date as timestamp) < params.events_end_ts

),

outcomes as (

    select
        windows.run_date,
        windows.user_id,
        windows.rank,
        count(events.event_id)                                                   as n_events,
        count(case when events.event_type = 'purchase' then events.event_id end) as n_purchases,
        coalesce(sum(events.amount), 0)                                          as revenue
    from windows
    left join events
        on events.user_id = windows.user_id
        and events.item_id = windows.item_id
        and events.event_ts >= windows.window_start_ts
        and events.event_ts < windows.window_end_ts
    group by windows.run_date, windows.user_id, windows.rank

)

select
    windows.run_date,
    windows.user_id,
    windows.rank,
    windows.item_id,
    windows.model_name,
    windows.model_version,
    {{ outcome_days }}                                   as outcome_days,
    windows.window_end_ts <= windows.events_end_ts       as window_complete,
    outcomes.n_events > 0                                as interacted,
    outcomes.n_purchases > 0                             as bought,
    cast(outcomes.revenue as double precision)           as revenue
from windows
inner join outcomes
    on outcomes.run_date = windows.run_date
    and outcomes.user_id = windows.user_id
    and outcomes.rank = windows.rank
