#!/usr/bin/env bash
# Submit ONE partition to a standing Ray cluster with `ray job submit` and wait:
# `clam-dist run-partition` assigns the partition with the registry's champion, measures
# drift and refreshes the model when the data moved (jobs/run_partition.py).
#
#   RAY_ADDRESS=http://head:8265 CLAM_DIST_REGISTRY=s3://bucket/registry CLAM_DIST_MODEL_NAME=events \
#   CLAM_DIST_INPUT_TEMPLATE='s3://bucket/events/dt={partition}' \
#     infra/cron/submit_partition.sh 2026-12-02 [--set SECTION.FIELD=VALUE ...]
#
# KEY (the first argument) is the partition the SCHEDULER means: cron passes the date before
# its fire (clam-dist-partition.cron), Airflow passes {{ ds }}, a backfill passes each missed
# date. This script never reads the clock for it, so the same KEY always names the same data
# and a re-run or a backfill is the same command.
#
# Environment: RAY_ADDRESS, CLAM_DIST_REGISTRY, CLAM_DIST_MODEL_NAME, CLAM_DIST_INPUT_TEMPLATE
# (an input URL holding {partition}, replaced by KEY); optional CLAM_DIST_CONFIG (config
# file), CLAM_DIST_PARTITION_PATTERN (an extended regex for KEY; default a date YYYY-MM-DD),
# CLAM_DIST_SUMMARY_DIR (where the job writes partition-<KEY>.json: an existing folder the
# job's driver on the cluster can write, or a URL; default /mnt/runs, the shared volume).
# Extra arguments go to the job (--set SECTION.FIELD=VALUE, --reapply-champion: a key that
# already ran is reported, not redone, without it).
# Exit code: 2 for bad input, refused in one line before anything is submitted; otherwise
# the job's (0 succeeded, 2 the job refused its input, 1 failed or stopped).
set -euo pipefail

refuse() {
  echo "submit_partition.sh: $*" >&2
  exit 2
}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

default_pattern='^[0-9]{4}-[0-9]{2}-[0-9]{2}$'
pattern="${CLAM_DIST_PARTITION_PATTERN:-$default_pattern}"
key="${1:-}"
[[ -n "$key" ]] || refuse "missing the partition key (first argument, e.g. 2026-12-02: the schedule's date)"
shift
# Never a path, whatever the pattern: the key fills a URL segment and a file name.
case "$key" in
  -* | */* | *\\* | *..* | *[[:space:]]* | *[[:cntrl:]]*)
    refuse "partition key $(printf '%q' "$key") is not one path segment" ;;
esac
[[ "$key" =~ $pattern ]] || refuse "partition key $(printf '%q' "$key") does not match $pattern"
if [[ "$pattern" == "$default_pattern" ]] &&
  ! python -c 'import datetime, sys; datetime.date.fromisoformat(sys.argv[1])' "$key" 2>/dev/null; then
  refuse "partition key $key is not a calendar date"
fi

need() {
  [[ -n "${!1:-}" ]] || refuse "set $1 ($2)"
}
need RAY_ADDRESS "the cluster dashboard, e.g. http://head:8265"
need CLAM_DIST_REGISTRY "the model registry URL, e.g. s3://bucket/registry"
need CLAM_DIST_MODEL_NAME "the registered model's name"
need CLAM_DIST_INPUT_TEMPLATE "the input URL with {partition}, e.g. s3://bucket/events/dt={partition}"
[[ "$CLAM_DIST_INPUT_TEMPLATE" == *"{partition}"* ]] ||
  refuse "CLAM_DIST_INPUT_TEMPLATE has no {partition}: every key would read the same input"

input="${CLAM_DIST_INPUT_TEMPLATE//"{partition}"/"$key"}"
summary="${CLAM_DIST_SUMMARY_DIR:-/mnt/runs}/partition-$key.json"
config_args=()
if [[ -n "${CLAM_DIST_CONFIG:-}" ]]; then
  config_args=(--config "$CLAM_DIST_CONFIG")
fi
overrides=()  # what the config check gets: the job's options less its flags
for arg in "$@"; do
  [[ "$arg" == --reapply-champion ]] || overrides+=("$arg")
done

# Fail here, in seconds, rather than on the cluster (exit 2: nothing submitted).
python infra/validate.py runtime-env infra/runtime_env.yaml >&2 || refuse "infra/runtime_env.yaml does not validate"
python infra/validate.py partition-config "${config_args[@]}" "${overrides[@]}" >&2 || refuse "the config does not validate"

# Unique per submission (a retry of the same key is a new Ray job), and not from the clock.
suffix="$(python -c 'import uuid; print(uuid.uuid4().hex[:8])')"
submission_id="clam-partition-$key-$suffix"
echo "{\"event\": \"submit\", \"submission_id\": \"$submission_id\", \"partition\": \"$key\", \"summary\": \"$summary\"}"
rc=0
ray job submit --address "$RAY_ADDRESS" --submission-id "$submission_id" \
  --working-dir . --runtime-env infra/runtime_env.yaml \
  -- python jobs/run_partition.py --registry "$CLAM_DIST_REGISTRY" --name "$CLAM_DIST_MODEL_NAME" \
  --partition "$key" --input "$input" --summary "$summary" "${config_args[@]}" "$@" || rc=$?
# `ray job submit` waits and tails the logs, but exits 1 for any failure; the job's final
# state (and the driver's exit code in its status message) decides this script's.
# Only the lines before "Status message:" tell the state (the log tail follows it).
status="$(ray job status --address "$RAY_ADDRESS" "$submission_id" 2>&1 || true)"
if grep -qi "succeeded" <<<"${status%%Status message:*}"; then
  state=succeeded
  rc=0
else
  state=failed
  code="$(grep -o -m1 'failed with exit code [0-9]*' <<<"$status" | grep -o '[0-9]*$' || true)"
  if [[ -n "$code" && "$code" != 0 ]]; then
    rc="$code"
  fi
  rc=$((rc == 0 ? 1 : rc))
fi
echo "{\"event\": \"finished\", \"submission_id\": \"$submission_id\", \"partition\": \"$key\", \"state\": \"$state\", \"exit_code\": $rc}"
exit "$rc"
