#!/usr/bin/env bash
# The one-command demo: SQLite, a file-system broker and an in-process channel layer
# (no servers needed), a demo user, a sample or given slide, a worker and the web server
# on 127.0.0.1. Stop with Ctrl-C; data stays in var/ for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
export NEPHROWEB_DATA_DIR=${NEPHROWEB_DATA_DIR:-$PWD/var}
# The demo runs on the embedded defaults whatever the shell has set.
unset DATABASE_URL REDIS_URL
if [ -n "${SAM_CHECKPOINT:-}" ]; then
  export NEPHROWEB_SAM_CHECKPOINT=$(realpath "$SAM_CHECKPOINT")
fi

mkdir -p "$NEPHROWEB_DATA_DIR/broker/queue" "$NEPHROWEB_DATA_DIR/broker/processed" "$NEPHROWEB_DATA_DIR/broker/control"
$PY manage.py migrate --noinput
setup_args=()
[ -n "${SLIDE:-}" ] && setup_args+=(--slide "$SLIDE")
[ -n "${MPP:-}" ] && setup_args+=(--mpp "$MPP")
[ -n "${NO_MODEL:-}" ] && setup_args+=(--no-model)
$PY manage.py setup_demo "${setup_args[@]}"

$PY -m celery -A nephroweb worker -Q gpu,default --pool solo --concurrency 1 \
  --loglevel INFO --logfile "$NEPHROWEB_DATA_DIR/worker.log" &
worker_pid=$!
trap 'kill $worker_pid 2>/dev/null || true' EXIT

echo
echo "nephroweb demo: http://$HOST:$PORT/   (sign in with the demo user above; Ctrl-C stops)"
echo "worker log: $NEPHROWEB_DATA_DIR/worker.log"
if [ -z "${NEPHROWEB_SAM_CHECKPOINT:-}" ]; then
  echo "No SAM checkpoint given: proposals will try to download the official vit_b file;"
  echo "offline, pass one with: make demo SAM_CHECKPOINT=/path/to/sam_vit_b_01ec64.pth"
fi
$PY -m daphne -b "$HOST" -p "$PORT" nephroweb.asgi:application
