{#-
    Models land in exactly the schema named by their `schema` config (staging, intermediate, marts),
    not dbt's default `<target_schema>_<custom>`. Nodes without a custom schema (tests' audit tables,
    seeds if any) use the target's schema.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
