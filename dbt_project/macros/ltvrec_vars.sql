{#-
    Validated SQL literals for the project vars (they are interpolated into SQL, so each is checked
    against a strict pattern first and the run fails at compile time on anything else).
-#}

{% macro ltvrec_date_var(name) -%}
    {#- The date var `name` as 'YYYY-MM-DD', or '' when it is empty; anything else fails compilation. -#}
    {%- set raw = var(name, '') -%}
    {%- set raw = '' if raw is none else (raw | string | trim) -%}
    {%- if raw != '' and not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', raw) -%}
        {{ exceptions.raise_compiler_error("var '" ~ name ~ "' must be 'YYYY-MM-DD' or empty, got: " ~ raw) }}
    {%- endif -%}
    {{ return(raw) }}
{%- endmacro %}

{% macro ltvrec_as_of_date(events_relation) -%}
    {#- Run date as a SQL date expression. Empty var: the date of the latest event_ts in events_relation. -#}
    {%- set raw = ltvrec_date_var('as_of') -%}
    {%- if raw == '' -%}
        (select cast(max(event_ts) as date) from {{ events_relation }})
    {%- else -%}
        cast('{{ raw }}' as date)
    {%- endif -%}
{%- endmacro %}

{% macro ltvrec_defer_from() -%}
    {#- Start of a later run's events as a SQL timestamp (var defer_from 'YYYY-MM-DD'); empty: NULL, none are. -#}
    {%- set raw = ltvrec_date_var('defer_from') -%}
    {%- if raw == '' -%}
        cast(null as timestamp)
    {%- else -%}
        cast('{{ raw }}' as timestamp)
    {%- endif -%}
{%- endmacro %}

{% macro ltvrec_events_end(events_relation) -%}
    {#- Where a load's clean events end (exclusive), as a SQL timestamp: the day after the latest one. -#}
    (select cast(cast(max(event_ts) as date) + 1 as timestamp) from {{ events_relation }})
{%- endmacro %}

{% macro ltvrec_min_event_ts() -%}
    {%- set raw = var('min_event_ts', '1990-01-01') | string | trim -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]+)?)?)?$', raw) -%}
        {{ exceptions.raise_compiler_error("var 'min_event_ts' must be 'YYYY-MM-DD[ HH:MM[:SS]]', got: " ~ raw) }}
    {%- endif -%}
    cast('{{ raw }}' as timestamp)
{%- endmacro %}

{% macro ltvrec_number_var(name, default) -%}
    {%- set raw = var(name, default) | string | trim -%}
    {%- if not modules.re.match('^[0-9]+(\\.[0-9]+)?([eE][+-]?[0-9]+)?$', raw) -%}
        {{ exceptions.raise_compiler_error("var '" ~ name ~ "' must be a non-negative number, got: " ~ raw) }}
    {%- endif -%}
    {{ raw }}
{%- endmacro %}

{% macro ltvrec_event_types(name) -%}
    {#- The list var `name` (event_types or raw_only_event_types), checked. Neither has a default here: the
        vocabulary is defined once, in ltvrec.config, and ltvrec passes it (ltvrec.cleaning.dbt_vars). -#}
    {%- set values = var(name, none) -%}
    {%- if values is none -%}
        {{ exceptions.raise_compiler_error("var '" ~ name ~ "' is required: the list of event types from ltvrec.config "
                                           ~ "(run dbt through ltvrec.cleaning, or pass --vars from ltvrec.cleaning.dbt_vars)") }}
    {%- endif -%}
    {%- if values is string or values is mapping or values is not iterable or values | length == 0 -%}
        {{ exceptions.raise_compiler_error("var '" ~ name ~ "' must be a non-empty list of event types, got: " ~ values) }}
    {%- endif -%}
    {%- for value in values -%}
        {%- if value is not string or not modules.re.match('^[a-z][a-z0-9_]*$', value) -%}
            {{ exceptions.raise_compiler_error("var '" ~ name ~ "': not an event type name: " ~ value) }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(values | list) }}
{%- endmacro %}

{% macro ltvrec_sql_list(values) -%}
    {#- ('a', 'b', ...) for `in`; values are checked names (ltvrec_event_types). -#}
    ({%- for value in values -%}'{{ value }}'{{ ', ' if not loop.last }}{%- endfor -%})
{%- endmacro %}
