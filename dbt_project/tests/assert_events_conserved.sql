-- Every raw.events row is either a valid event or quarantined, exactly once:
-- count(fct_events) + count(events_quarantine) = count(raw.events). Returns a row on violation.
with counts as (

    select
        (select count(*) from {{ source('raw', 'events') }})    as n_raw,
        (select count(*) from {{ ref('fct_events') }})          as n_valid,
        (select count(*) from {{ ref('events_quarantine') }})   as n_rejected

)

select *
from counts
where n_valid + n_rejected <> n_raw
