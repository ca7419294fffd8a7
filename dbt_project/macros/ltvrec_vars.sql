{#-
    Validated SQL literals for the project vars (they are interpolated into SQL, so each is checked
    against a strict pattern first and the run fails at compile time on anything else).
-#}

{% macro ltvrec_as_of_date(events_relation) -%}
    {#- Run date as a SQL date expression. Empty var: the date of the latest event_ts in events_relation. -#}
    {%- set raw = var('as_of', '') -%}
    {%- set raw = '' if raw is none else (raw | string | trim) -%}
    {%- if raw == '' -%}
        (select cast(max(event_ts) as date) from {{ events_relation }})
    {%- elif modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', raw) -%}
        cast('{{ raw }}' as date)
    {%- else -%}
        {{ exceptions.raise_compiler_error("var 'as_of' must be 'YYYY-MM-DD' or empty, got: " ~ raw) }}
    {%- endif -%}
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
