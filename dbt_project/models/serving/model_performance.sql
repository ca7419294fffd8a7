-- Grain: one row per published run date and model version: how the recommendations and LTV estimates that version
-- published for that date turned out in the clean events after it. Recommendation figures once a day of the
-- outcome window (var outcome_days) is in the events (window_complete: all of it), averaged over the users of
-- marts.recommendation_user_outcomes; LTV figures once the whole horizon is.
{%- set outcome_days = ltvrec_number_var('outcome_days', none) %}
with user_outcomes as (

    select * from {{ ref('recommendation_user_outcomes') }}

),

events as (

    select * from {{ ref('fct_events') }}

),

params as (

    select {{ ltvrec_events_end(ref('fct_events')) }} as events_end_ts

),

recommendation_performance as (

    select
        run_date,
        model_version,
        max(model_name)                                     as model_name,
        max(top_n)                                          as top_n,
        bool_and(window_complete)                           as window_complete,
        count(*)                                            as users_covered,
        count(case when active then 1 end)                  as users_active,
        count(case when active and hit then 1 end)          as users_hit,
        avg(ndcg_at_n)                                      as ndcg_at_n,
        sum(revenue)                                        as revenue_at_n
    from user_outcomes
    group by run_date, model_version

),

ltv_windows as (

    -- the estimates whose horizon the events cover
    select estimates.run_date, estimates.model_version, estimates.user_id, estimates.expected_value as predicted,
        cast(estimates.run_date as timestamp)                           as horizon_start_ts,
        cast(estimates.run_date + estimates.horizon_days as timestamp)  as horizon_end_ts
    from {{ source('serving', 'ltv_estimates') }} as estimates
    cross join params
    where cast(estimates.run_date + estimates.horizon_days as timestamp) <= params.events_end_ts

),

spend as (

    -- net spend in the horizon, floored at 0 as the LTV labels are
    select ltv_windows.run_date, ltv_windows.model_version, ltv_windows.user_id, ltv_windows.predicted,
        greatest(coalesce(sum(events.amount), 0), 0) as actual
    from ltv_windows
    left join events
        on events.user_id = ltv_windows.user_id
        and events.event_ts >= ltv_windows.horizon_start_ts
        and events.event_ts < ltv_windows.horizon_end_ts
    group by ltv_windows.run_date, ltv_windows.model_version, ltv_windows.user_id, ltv_windows.predicted

),

ranked as (

    select
        spend.*,
        sum(actual) over (partition by run_date, model_version order by predicted desc, user_id
                          rows between unbounded preceding and current row) as captured_by_prediction,
        sum(actual) over (partition by run_date, model_version order by actual desc, user_id
                          rows between unbounded preceding and current row) as captured_by_actual,
        ntile(10) over (partition by run_date, model_version order by predicted, user_id) as decile
    from spend

),

deciles as (

    select run_date, model_version, decile, sum(predicted) as predicted, sum(actual) as actual
    from ranked
    group by run_date, model_version, decile

),

decile_error as (

    select run_date, model_version, avg(abs(predicted - actual) / actual) as decile_mape
    from deciles
    where actual > 0
    group by run_date, model_version

),

ltv_performance as (

    -- normalized Gini: the area between the gain curve and the diagonal, customers taken by prediction, over the
    -- same area for the perfect order; both areas are mean(captured share) - (n + 1) / 2n
    select
        run_date,
        model_version,
        count(*)        as ltv_customers,
        sum(predicted)  as predicted_spend,
        sum(actual)     as actual_spend,
        case when sum(actual) > 0 then
            (avg(captured_by_prediction) / sum(actual) - (count(*) + 1) / (2.0 * count(*)))
            / nullif(avg(captured_by_actual) / sum(actual) - (count(*) + 1) / (2.0 * count(*)), 0)
        end             as normalized_gini
    from ranked
    group by run_date, model_version

)

select
    coalesce(recommendation_performance.run_date, ltv_performance.run_date)           as run_date,
    coalesce(recommendation_performance.model_version, ltv_performance.model_version) as model_version,
    -- one registered model publishes a date (its LTV rows carry no name)
    coalesce(recommendation_performance.model_name, run_models.model_name)             as model_name,
    recommendation_performance.top_n,
    {{ outcome_days }}                                                                 as outcome_days,
    recommendation_performance.window_complete,
    recommendation_performance.users_covered,
    recommendation_performance.users_active,
    cast(recommendation_performance.users_hit as double precision)
        / nullif(recommendation_performance.users_active, 0)                         as hit_rate_at_n,
    cast(recommendation_performance.ndcg_at_n as double precision)                   as ndcg_at_n,
    cast(recommendation_performance.revenue_at_n as double precision)                as revenue_at_n,
    ltv_performance.ltv_customers,
    cast(ltv_performance.predicted_spend as double precision)                        as ltv_predicted_spend,
    cast(ltv_performance.actual_spend as double precision)                           as ltv_actual_spend,
    cast(ltv_performance.predicted_spend / nullif(ltv_performance.actual_spend, 0) as double precision)
                                                                                       as ltv_spend_ratio,
    cast(ltv_performance.normalized_gini as double precision)                        as ltv_normalized_gini,
    cast(decile_error.decile_mape as double precision)                               as ltv_decile_mape
from recommendation_performance
full outer join ltv_performance
    on ltv_performance.run_date = recommendation_performance.run_date
    and ltv_performance.model_version = recommendation_performance.model_version
left join decile_error
    on decile_error.run_date = ltv_performance.run_date
    and decile_error.model_version = ltv_performance.model_version
left join (select run_date, max(model_name) as model_name from user_outcomes group by run_date) as run_models
    on run_models.run_date = coalesce(recommendation_performance.run_date, ltv_performance.run_date)
