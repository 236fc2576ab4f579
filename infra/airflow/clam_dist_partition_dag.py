"""Airflow example: one partition a day through infra/cron/submit_partition.sh.

Copy into the DAGs folder of an Airflow whose workers hold a checkout of this repo (at
CLAM_DIST_HOME) and reach the Ray cluster; edit the environment below.

The partition key is ``{{ ds }}``, the run's logical date. With a data-interval timetable
(below, explicit so Airflow 2 and 3 agree) the run for 2026-12-02 covers 2026-12-02 03:15 ->
2026-12-03 03:15 UTC and starts when that interval ends, so ``{{ ds }}`` is the day that has just
finished, the same key as clam-dist-partition.cron and cronjob-partition.yaml. (Airflow 3's
default for a plain cron string is a trigger timetable, whose ``ds`` is the run's own day.)

Backfills: ``catchup=True`` makes the scheduler run every missed interval since start_date,
oldest first and one at a time (``max_active_runs=1``: each partition may refresh the model the
next one uses); a range by hand: ``airflow dags backfill -s 2026-11-28 -e 2026-11-30
clam_dist_partition`` (Airflow 2) or ``airflow backfill create --dag-id clam_dist_partition
--from-date 2026-11-28 --to-date 2026-11-30`` (Airflow 3). A key that already ran is reported,
not redone.

The script exits with the job's code: 0 succeeded, 2 bad input (refused before submitting),
1 failed; any non-zero fails the task. The airflow imports are guarded so this file imports
(and infra/validate.py checks it) where Airflow is not installed.
"""

from __future__ import annotations

import os
from datetime import timedelta

try:
    import pendulum
    from airflow.timetables.interval import CronDataIntervalTimetable

    try:
        from airflow.sdk import DAG  # Airflow 3
    except ImportError:
        from airflow import DAG  # Airflow 2
    try:
        from airflow.providers.standard.operators.bash import BashOperator
    except ImportError:
        from airflow.operators.bash import BashOperator
except ImportError:  # no Airflow here (CI, a laptop): nothing to define
    DAG = None

CLAM_DIST_HOME = os.environ.get("CLAM_DIST_HOME", "/opt/clam-dist")
JOB_ENV = {
    "RAY_ADDRESS": "http://ray-head:8265",
    "CLAM_DIST_REGISTRY": "s3://my-bucket/registry",
    "CLAM_DIST_MODEL_NAME": "events",
    "CLAM_DIST_INPUT_TEMPLATE": "s3://my-bucket/events/dt={partition}",
    "CLAM_DIST_CONFIG": "/etc/clam-dist/partition.toml",
}

if DAG is not None:
    with DAG(
        dag_id="clam_dist_partition",
        schedule=CronDataIntervalTimetable("15 3 * * *", timezone=pendulum.timezone("UTC")),
        start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),  # the first partition to assign
        catchup=True,
        max_active_runs=1,
        default_args={"retries": 1, "retry_delay": timedelta(minutes=15)},
        tags=["clam-dist"],
    ) as dag:
        BashOperator(
            task_id="run_partition",
            # Not ending in ".sh": Airflow would read the string as a template file's name.
            bash_command="infra/cron/submit_partition.sh {{ ds }}",
            cwd=CLAM_DIST_HOME,
            env=JOB_ENV,
            append_env=True,  # keep PATH, RAY_AUTH_TOKEN etc. of the worker
        )
