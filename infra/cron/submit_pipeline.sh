#!/usr/bin/env bash
# Submit the end-to-end pipeline to a standing Ray cluster with `ray job submit` and wait.
# Exit code: the job's (0 succeeded; non-zero failed or stopped), so cron/any scheduler can
# alert on it. Checks the runtime env and the pipeline config BEFORE submitting.
#
#   RAY_ADDRESS=http://head:8265 CLAM_DIST_CONFIG=my.toml infra/cron/submit_pipeline.sh [--set k=v ...]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
address="${RAY_ADDRESS:?set RAY_ADDRESS to the cluster dashboard, e.g. http://head:8265}"
run_root="${CLAM_DIST_RUN_ROOT:-/mnt/runs}"
run_dir="${CLAM_DIST_RUN_DIR:-$run_root/$(date -u +%Y-%m-%d)}"
config_args=()
if [[ -n "${CLAM_DIST_CONFIG:-}" ]]; then
  config_args=(--config "$CLAM_DIST_CONFIG")
fi

# Fail here, in seconds, rather than on the cluster.
python infra/validate.py runtime-env infra/runtime_env.yaml
python infra/validate.py pipeline-config "${config_args[@]}" "$@"

submission_id="clam-pipeline-$(date -u +%Y%m%dT%H%M%SZ)"
echo "{\"event\": \"submit\", \"submission_id\": \"$submission_id\", \"run_dir\": \"$run_dir\"}"
rc=0
ray job submit --address "$address" --submission-id "$submission_id" \
  --working-dir . --runtime-env infra/runtime_env.yaml \
  -- python jobs/pipeline.py "${config_args[@]}" --run-dir "$run_dir" --set storage.shared=true "$@" || rc=$?
# `ray job submit` waits and tails the logs; the job's final state decides the exit code.
if ray job status --address "$address" "$submission_id" 2>&1 | grep -qi "succeeded"; then
  state=succeeded
else
  state=failed
  rc=$(( rc == 0 ? 1 : rc ))
fi
echo "{\"event\": \"finished\", \"submission_id\": \"$submission_id\", \"state\": \"$state\", \"exit_code\": $rc}"
exit "$rc"
