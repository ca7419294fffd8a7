-- amount is quantity * unit_price for purchases, its negative for returns, and 0 for other events.
select *
from {{ ref('fct_events') }}
where (event_type = 'purchase' and amount <> quantity * unit_price)
   or (event_type = 'return' and amount <> -(quantity * unit_price))
   or (event_type not in ('purchase', 'return') and amount <> 0)
