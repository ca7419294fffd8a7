-- Grain: one row per reject_reason that occurred in this load.
select
    reject_reason,
    count(*) as n_rows
from {{ ref('events_quarantine') }}
group by reject_reason
