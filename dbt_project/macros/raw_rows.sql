{#- The raw tables dbt reads: ltvrec's own load (raw.events, raw.items, written by ltvrec/sources.py) or, with the
    warehouse source, the tables the team already loads (vars raw_schema, events_table, items_table). Both are read
    through ltvrec_raw_rows, so staging and the quarantines see the same rows with the same source_row. -#}

{% macro ltvrec_raw_columns(table) -%}
    {%- set columns = {
        'events': ['user_id', 'item_id', 'event_type', 'event_ts', 'quantity', 'unit_price'],
        'items': ['item_id', 'title', 'category', 'price', 'in_stock'],
    } -%}
    {{ return(columns[table]) }}
{%- endmacro %}

{% macro ltvrec_raw_rows(table) -%}
    {#- One row per row of source('raw', table): its contract columns as stored (NULL where an optional one is
        absent; a time zone aware event_ts as naive UTC), then source_file and source_row. ltvrec's load has both; a
        team's table gets its relation's name and the row's position in the order of its load time (var
        loaded_at_field, when the table has it) and values, so a load numbers its rows the same way every time. -#}
    {%- set relation = source('raw', table) -%}
    {%- set present = {} -%}
    {%- if execute -%}
        {%- for column in adapter.get_columns_in_relation(relation) -%}
            {%- do present.update({column.name | lower: column.data_type | lower}) -%}
        {%- endfor -%}
    {%- endif -%}
    {%- set columns = ltvrec_raw_columns(table) -%}
    {%- set loaded_at = var('loaded_at_field') | lower -%}
    {%- set order = ([loaded_at] if loaded_at in present else []) + columns | select('in', present) | list -%}
    select
    {%- for name in columns %}
        {% if name not in present -%}
        null
        {%- elif 'with time zone' in present[name] or present[name] == 'timestamptz' -%}
        ({{ adapter.quote(name) }} at time zone 'UTC')
        {%- else -%}
        {{ adapter.quote(name) }}
        {%- endif %} as {{ name }},
    {%- endfor %}
    {%- if 'source_row' in present %}
        source_file,
        source_row
    {%- else %}
        cast('{{ relation.schema }}.{{ relation.identifier }}' as varchar) as source_file,
        row_number() over (order by
            {%- for name in order %} {{ adapter.quote(name) }}{{ ',' if not loop.last }}{% endfor %}) as source_row
    {%- endif %}
    from {{ relation }}
{%- endmacro %}
