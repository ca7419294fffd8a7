-- Grain: one row per published run date, model version and user with a top-N (marts.recommendation_outcomes):
-- how the user's top-N did in the var outcome_days days from the run date. Relevant to a user: the items the user
-- first touched in the window, the only kind a top-N of unseen items can hit; a user with none is not active and
-- has no NDCG. serving.model_performance averages these rows per run date and version; a paired comparison of
-- two policies or models on the same run date joins them by user.
with outcomes as (

    select * from {{ ref('recommendation_outcomes') }}

),

events as (

    select * from {{ ref('fct_events') }}

),

first_touches as (

    select user_id, item_id, min(event_ts) as first_ts
    from events
    group by user_id, item_id

),

relevant as (

    select run_dates.run_date, first_touches.user_id, count(*) as n_relevant
    from (select distinct run_date, outcome_days from outcomes) as run_dates
    inner join first_touches
        on first_touches.first_ts >= cast(run_dates.run_date as timestamp)
        and first_touches.first_ts < cast(run_dates.run_date + run_dates.outcome_days as timestamp)
    group by run_dates.run_date, first_touches.user_id

),

runs as (

    select run_date, model_version, max(model_name) as model_name, max(rank) as top_n,
        bool_and(window_complete) as window_complete
    from outcomes
    group by run_date, model_version

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

)

select
    per_user.run_date,
    per_user.model_version,
    per_user.user_id,
    runs.model_name,
    runs.top_n,
    runs.window_complete,
    coalesce(relevant.n_relevant, 0)                                     as n_relevant,
    ideal.user_id is not null                                            as active,
    per_user.hit = 1                                                     as hit,
    cast(per_user.dcg / ideal.idcg as double precision)                  as ndcg_at_n,
    cast(per_user.revenue as double precision)                           as revenue
from per_user
inner join runs
    on runs.run_date = per_user.run_date and runs.model_version = per_user.model_version
left join relevant
    on relevant.run_date = per_user.run_date and relevant.user_id = per_user.user_id
left join ideal
    on ideal.run_date = per_user.run_date and ideal.model_version = per_user.model_version
    and ideal.user_id = per_user.user_id
