#!/usr/bin/env bash
# `make run`: the app on the embedded defaults (SQLite, local media, in-process cache,
# file-system broker): one Celery worker beside the web server.
#
# Refuses to start a second time from the same folder (a lock on var/run.lock, which holds the
# running one's pid and address) or on a port another program uses, before it touches the
# database, the broker or any file. Then migrates, seeds the demo and starts both processes.
# Ctrl+C stops both within about 10 s: a running job stops at its next step and records why
# (docs/operations.md, "Stopping"); a worker that does not stop within STOP_GRACE seconds is
# killed and its jobs are closed with the same sentence.
#
# The terminal shows the address, the demo logins, warnings and errors; the web server's access
# log and its full log go to var/log/access.log and var/log/web.log, the worker's to
# var/log/worker.log. SEED_ARGS passes options to `manage.py seed_demo` (the tests seed less).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
STOP_GRACE=${STOP_GRACE:-6}
VAR_DIR=${VAR_DIR:-var}
URL="http://$HOST:$PORT/"
LOCK="$VAR_DIR/run.lock"
LOGS="$VAR_DIR/log"

mkdir -p "$VAR_DIR"
exec 9>>"$LOCK"
if command -v flock >/dev/null; then
    flock --nonblock 9 || running=yes
else  # no flock(1) (macOS): the recorded pid, if that process still lives
    read -r pid _ <"$LOCK" 2>/dev/null && kill -0 "$pid" 2>/dev/null && running=yes
fi
if [ "${running:-}" = yes ]; then
    read -r pid url _ <"$LOCK" || true
    echo "Cytomark is already running at ${url:-$URL} (pid ${pid:-unknown}); stop it with Ctrl-C in its terminal." >&2
    exit 1
fi
if ! "$PY" -c 'import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1].strip("[]"), int(sys.argv[2])))' "$HOST" "$PORT" 2>/dev/null; then
    echo "Port $PORT on $HOST is in use by another program; stop it, or start Cytomark on another port: make run PORT=$((PORT + 1))" >&2
    exit 1
fi
echo "$$ $URL" >"$LOCK"

mkdir -p "$LOGS"
echo "Preparing the database and the demo (log: $LOGS/setup.log) ..."
export LOG_FILE="$LOGS/setup.log" CONSOLE_LOG_LEVEL=WARNING
"$PY" manage.py migrate --noinput >>"$LOGS/setup.log"
"$PY" manage.py collectstatic --noinput --verbosity 0
# shellcheck disable=SC2086  # SEED_ARGS is a list of options
"$PY" manage.py seed_demo ${SEED_ARGS:-}
unset LOG_FILE CONSOLE_LOG_LEVEL

# The worker and the web server run in process groups of their own, so that a Ctrl-C in the
# terminal reaches only this script, which passes exactly one signal on: a second SIGINT would be
# Celery's cold shutdown, which the solo pool cannot do, and a web server that got the terminal's
# signal itself would race this script and look as if it had stopped by itself. The worker's
# banner and log go to its log file; a job's failure is told on the job's page.
# Only ever run in the background (`own_group ... &`): exec makes $! the process itself.
own_group() {
    exec "$PY" -c 'import os, sys; os.setpgid(0, 0); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])' "$@"
}
own_group -m celery -A config worker --pool=solo --concurrency=1 --loglevel=info \
    --queues default,tiles,exports,training --without-gossip --without-mingle \
    --logfile="$LOGS/worker.log" >>"$LOGS/worker.log" &
worker=$!
LOG_FILE="$LOGS/web.log" CONSOLE_LOG_LEVEL=WARNING \
    own_group -m gunicorn config.wsgi:application --bind "$HOST:$PORT" --workers 2 --threads 4 \
    --graceful-timeout 5 --access-logfile "$LOGS/access.log" --log-level warning &
web=$!

echo "$$ $URL $worker $web" >"$LOCK"

# $1: the exit status; SIGINT (a Ctrl-C) is passed to the worker as such, so that its jobs say so.
stop() {
    trap '' INT TERM HUP
    echo
    echo "Stopping Cytomark ..."
    kill -TERM "$web" 2>/dev/null || true
    kill "-$([ "$1" = 130 ] && echo INT || echo TERM)" "$worker" 2>/dev/null || true
    for _ in $(seq $((STOP_GRACE * 10))); do
        kill -0 "$worker" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$worker" 2>/dev/null; then
        echo "The worker did not stop within $STOP_GRACE s; killing it." >&2
        kill -KILL "$worker" 2>/dev/null || true
        wait "$worker" 2>/dev/null || true
        reason="Cytomark was shut down"
        [ "$1" = 130 ] && reason="$reason (Ctrl-C)"
        "$PY" manage.py close_stopped_jobs "$worker" --reason "$reason" || true
    fi
    wait "$web" 2>/dev/null || true
    wait "$worker" 2>/dev/null || true
    echo "Cytomark has stopped."
    exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM
trap 'stop 129' HUP

echo
echo "Cytomark is running at $URL  (API docs: ${URL}api/docs/)"
echo "Demo logins are printed above and kept in $VAR_DIR/demo-logins.json."
echo "Logs: $LOGS/access.log (requests), $LOGS/web.log, $LOGS/worker.log. Ctrl+C stops it."
echo
status=0
wait -n "$web" "$worker" || status=$?
echo "The $(kill -0 "$web" 2>/dev/null && echo worker || echo web server) stopped by itself (exit status $status); see $LOGS/." >&2
stop 1
