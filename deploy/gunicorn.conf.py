"""Gunicorn settings for the production image (`cytomark web`), all overridable from the
environment.

The web process serves pages, the JSON API, slide tiles (many small, quick requests) and scan
uploads (few, long ones, up to several GB, already buffered to disk by nginx). Threaded workers
(gthread) suit both: a tile request is short, and a long upload only holds a thread, while the
worker's main thread keeps answering the arbiter's heartbeat, so `timeout` does not kill it.
"""

import math
import os
from pathlib import Path


def _cpu_count() -> int:
    """Cores this container may use: the CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# Where nginx reaches gunicorn. The port is not published on the host: only nginx talks to it.
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")

# Worker processes (WEB_CONCURRENCY is also the name Gunicorn itself reads) and threads each.
workers = _int("WEB_CONCURRENCY", 2 * _cpu_count() + 1)
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 4)

# A worker that stops answering the arbiter for this long is killed and replaced.
timeout = _int("GUNICORN_TIMEOUT", 120)
# On a restart or scale-down, requests in flight (an upload) get this long to finish.
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 60)
# Idle keep-alive with nginx's upstream pool; nginx's upstream keepalive_timeout is shorter.
keepalive = _int("GUNICORN_KEEPALIVE", 75)

# Recycle workers now and then so memory held by OpenSlide handles and caches is returned.
max_requests = _int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 200)

# The heartbeat files in memory, not on the container's overlay file system.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# nginx sets X-Forwarded-Proto / X-Forwarded-For. Gunicorn trusts them only from these
# addresses; the compose file sets "*" because gunicorn's port is reachable from the internal
# network alone. (Django itself trusts X-Forwarded-Proto through SECURE_PROXY_SSL_HEADER.)
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Logs: access log and error log to stdout/stderr for the container runtime to collect.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# Client address as nginx saw it, request, status, bytes, referrer, agent, duration in ms.
access_log_format = (
    '%({x-forwarded-for}i)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'
)
# Prefix the process title so `ps` shows which container process is which.
proc_name = "cytomark-web"
