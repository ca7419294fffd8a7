-- Grain: one row per raw events row (ltvrec's load or the team's table: macros/raw_rows.sql). Rename/cast only;
-- no rows are dropped here.
with source as (

    {{ ltvrec_raw_rows('events') }}

)

select
    cast(source_row as bigint)                          as source_row,
    cast(source_file as varchar)                        as source_file,
    nullif(trim(cast(user_id as varchar)), '')          as user_id,
    nullif(trim(cast(item_id as varchar)), '')          as item_id,
    nullif(lower(trim(cast(event_type as varchar))), '') as event_type,
    cast(event_ts as timestamp)                         as event_ts,
    cast(quantity as double precision)                  as quantity,
    cast(unit_price as double precision)                as unit_price
from source
