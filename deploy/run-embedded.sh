#!/usr/bin/env bash
# `make run`'s last step: one Celery worker beside the web server, on the embedded defaults
# (SQLite, local media, in-process cache, file-system broker). Ctrl+C stops both.
set -euo pipefail
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
mkdir -p var/log

$PY -m celery -A config worker --pool=solo --concurrency=1 --loglevel=info \
    --queues default,tiles,exports,training \
    --logfile=var/log/worker.log &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT INT TERM

echo
echo "Cytomark is running at http://$HOST:$PORT/  (API docs: http://$HOST:$PORT/api/docs/)"
echo "Demo logins are printed above and kept in var/demo-logins.json. Ctrl+C stops it."
echo
$PY -m gunicorn config.wsgi:application --bind "$HOST:$PORT" --workers 2 --threads 4 \
    --access-logfile - --log-level warning
