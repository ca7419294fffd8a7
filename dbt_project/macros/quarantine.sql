{#- The two quarantines (events, catalogue rows) are built and checked the same way. -#}

{% macro ltvrec_quarantined_rows(checked, raw_rows) -%}
    {#- Every row of the query `raw_rows` (ltvrec_raw_rows) that `checked` (one row per source_row) gives a
        reject_reason, with its raw values as read. -#}
with rejected as (

    select source_row, reject_reason
    from {{ checked }}
    where reject_reason is not null

),

raw_rows as (

    {{ raw_rows }}

)

select
    raw_rows.*,
    rejected.reject_reason
from raw_rows
inner join rejected
    on rejected.source_row = raw_rows.source_row
{%- endmacro %}

{% macro ltvrec_rows_conserved(raw, kept, rejected, checked=none) -%}
    {#- A singular test's body: a row when count(kept) + count(rejected) + the rows `checked` defers (is_deferred)
        differs from count(raw). -#}
with counts as (

    select
        (select count(*) from {{ raw }})      as n_raw,
        (select count(*) from {{ kept }})     as n_kept,
        (select count(*) from {{ rejected }}) as n_rejected,
        {% if checked is not none -%}
        (select count(*) from {{ checked }} where is_deferred) as n_deferred
        {%- else -%}
        0 as n_deferred
        {%- endif %}

)

select *
from counts
where n_kept + n_rejected + n_deferred <> n_raw
{%- endmacro %}
