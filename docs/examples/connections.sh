# Connections as environment variables, in Airflow's JSON form. The documentation includes each block
# between its markers; tests/test_docs_examples.py sources this file and reads every connection.

# [START capillary_basic]
export AIRFLOW_CONN_CAPILLARY_DEFAULT='{"conn_type": "capillary", "host": "eu.api.capillarytech.com",
  "login": "store.server", "password": "server123", "extra": {"requests_per_minute": 100}}'
# [END capillary_basic]

# [START capillary_oauth]
export AIRFLOW_CONN_CAPILLARY_OAUTH='{"conn_type": "capillary", "host": "eu.api.capillarytech.com",
  "login": "<client key>", "password": "<client secret>", "extra": {"auth_type": "oauth"}}'
# [END capillary_oauth]

# [START capillary_shared_budget]
# Database 1 of the Redis that Celery already uses as its broker (database 0).
export AIRFLOW_CONN_CAPILLARY_BUDGET='{"conn_type": "redis", "host": "redis.internal", "port": 6379,
  "password": "<redis password>", "extra": {"db": 1}}'
export AIRFLOW_CONN_CAPILLARY_ORG='{"conn_type": "capillary", "host": "eu.api.capillarytech.com",
  "login": "store.server", "password": "server123",
  "extra": {"requests_per_minute": 600, "rate_limit_redis_conn_id": "capillary_budget"}}'
# [END capillary_shared_budget]

# [START capillary_private_ca]
export AIRFLOW_CONN_CAPILLARY_PRIVATE_CA='{"conn_type": "capillary", "host": "https://capillary.proxy.internal",
  "login": "store.server", "password": "server123",
  "extra": {"verify": "/etc/ssl/certs/ca-certificates.crt", "timezone": "Asia/Kolkata"}}'
# [END capillary_private_ca]

# [START warehouse_sqlite]
export AIRFLOW_CONN_WAREHOUSE='{"conn_type": "sqlite", "host": "/data/warehouse.db"}'
# [END warehouse_sqlite]

# [START warehouse_postgres]
export AIRFLOW_CONN_POSTGRES_DEFAULT='{"conn_type": "postgres", "host": "db.example.com", "port": 5432,
  "login": "airflow", "password": "<password>", "schema": "analytics"}'
# [END warehouse_postgres]
