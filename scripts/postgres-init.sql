-- The integration's ledger has its own database beside Airflow's metadata database.
CREATE DATABASE woo_mirakl_ledger OWNER airflow;
