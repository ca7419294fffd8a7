-- Runs once, on the first start of an empty data directory
-- (docker-entrypoint-initdb.d, executed by psql as the POSTGRES_USER superuser,
-- connected to POSTGRES_DB = ltvrec, the warehouse database).
--
-- Creates the Airflow metadata database and the MLflow backend database, each
-- owned by its own login role. Passwords are read from the container environment
-- with psql's \getenv (psql >= 15), so nothing is hard-coded here; docker-compose.yml
-- passes AIRFLOW_DB_PASSWORD / MLFLOW_DB_PASSWORD (dev defaults: airflow / mlflow).

\set ON_ERROR_STOP on

\getenv airflow_db_password AIRFLOW_DB_PASSWORD
\getenv mlflow_db_password MLFLOW_DB_PASSWORD
\if :{?airflow_db_password}
\else
  \set airflow_db_password airflow
\endif
\if :{?mlflow_db_password}
\else
  \set mlflow_db_password mlflow
\endif

CREATE ROLE airflow WITH LOGIN PASSWORD :'airflow_db_password';
CREATE ROLE mlflow WITH LOGIN PASSWORD :'mlflow_db_password';

-- Owning the database also makes the role owner of its public schema
-- (pg_database_owner, PostgreSQL 15+), so migrations can create tables there.
CREATE DATABASE airflow OWNER airflow;
CREATE DATABASE mlflow OWNER mlflow;

REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
