# The project's Airflow image: the official image plus the pinned requirements and the
# in-repo provider (connection types "Mirakl" and "WooCommerce").
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION
COPY --chown=airflow:0 requirements.txt pyproject.toml /opt/airflow/project/
COPY --chown=airflow:0 include /opt/airflow/project/include
# Pin apache-airflow in the same command so pip can never swap the image's Airflow.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/project/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/airflow/project \
 && python -m compileall -q /opt/airflow/project/include
# ^ bytecode in the image: every DAG file's parse imports these modules, and would compile them otherwise
