-- Grain: one row per published run date and model version: how the recommendations and LTV estimates that version
-- published for that date turned out in the clean events after it. Recommendation figures once a day of the
-- outcome window (var outcome_days) is in the events (window_complete: all of it), LTV figures once the whole
-- horizon is. Relevant to a user: the items the user first touched in the window, the only kind a top-N of
-- unseen items can hit.
{%- set outcome_days = ltvrec_number_var('outcome_days', none) %}
with outcomes as (

    select * from {{ ref('recommendation_outcomes') }}

),

events as (

    select * from {{ ref('fct_events') }}

),

params as (

    select {{ ltvrec_events_end(ref('fct_events')) }} as events_end_ts

),

first_touches as (

    select user_id, item_id, min(event_ts) as first_ts
    from events
    group by user_id, item_id

),

relevant as (

    select run_dates.run_date, first_touches.user_id, count(*) as n_relevant
    from (select distinct run_date from outcomes) as run_dates
    inner join first_touches
        on first_touches.first_ts >= cast(run_dates.run_date as timestamp)
        and first_touches.first_ts < cast(run_dates.run_date + {{ outcome_days }} as timestamp)
    group by run_dates.run_date, first_touches.user_id

),

per_user as (

    select
        run_date,
        model_version,
        user_id,
        max(case when interacted then 1 else 0 end)                                               as hit,
        sum(case when interacted then 1 / (ln(cast(rank + 1 as double precision)) / ln(cast(2 as double precision))) else 0 end) as dcg,
        sum(revenue)                                                                              as revenue
    from outcomes
    group by run_date, model_version, user_id

),

runs as (

    select run_date, model_version, max(model_name) as model_name, max(rank) as top_n,
        bool_and(window_complete) as window_complete
    from outcomes
    group by run_date, model_version

),

ideal as (

    select per_user.run_date, per_user.model_version, per_user.user_id,
        sum(1 / (ln(cast(ranks.rank + 1 as double precision)) / ln(cast(2 as double precision)))) as idcg
    from per_user
    inner join runs
        on runs.run_date = per_user.run_date and runs.model_version = per_user.model_version
    inner join relevant
        on relevant.run_date = per_user.run_date and relevant.user_id = per_user.user_id
    inner join (select distinct rank from outcomes) as ranks
        on ranks.rank <= relevant.n_relevant and ranks.rank <= runs.top_n
    group by per_user.run_date, per_user.model_version, per_user.user_id

),

recommendation_performance as (

    select
        runs.run_date,
        runs.model_version,
        runs.model_name,
        runs.top_n,
        runs.window_complete,
        count(*)                                                        as users_covered,
        count(ideal.user_id)                                            as users_active,
        sum(case when ideal.user_id is not null then per_user.hit end)  as users_hit,
        avg(per_user.dcg / ideal.idcg)                                  as ndcg_at_n,
        sum(per_user.revenue)                                           as revenue_at_n
    from runs
    inner join per_user
        on per_user.run_date = runs.run_date and per_user.model_version = runs.model_version
    left join ideal
        on ideal.run_date = per_user.run_date and ideal.model_version = per_user.model_version
        and ideal.user_id = per_user.user_id
    group by runs.run_date, runs.model_version, runs.model_name, runs.top_n, runs.window_complete

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
left join (select run_date, max(model_name) as model_name from outcomes group by run_date) as run_models
    on run_models.run_date = coalesce(recommendation_performance.run_date, ltv_performance.run_date)
