"""Benchmark: label saves through the API by concurrent annotators, against two baselines.

Twenty annotators (`--clients`), each with an API token and cells of their own on one synthetic
scan, label their cells through a real gunicorn in front of PostgreSQL and Redis:
`POST /api/v1/labels/ {"cell": id, "node": "NGS", "seconds_spent": 1.5}` for every cell, and for
every `--patch-every`-th one a change, `PATCH /api/v1/labels/<id>/` to LYT with the version the
POST returned. Each client is a thread holding one keep-alive connection (http.client). Settings
are the production profile (`config.settings.production`: DEBUG off, persistent database
connections, Redis cache and broker) over plain HTTP. Every client labels three cells before the
clock starts, so that each server thread has made a save before it is timed.

    saturated   all clients start together and send each request as soon as the last one is
                answered: the server's capacity. With 20 requests always in flight the mean
                latency is 20 / throughput, so p95 here is mostly waiting in line. Several
                gunicorn settings are tried (`--servers`, workers:threads; threads 1 = the sync
                worker, which closes the connection after each answer) and the best is reported.
    paced       the same clients on the best setting, each saving `--pace` times a second
                (default 2: 40 saves/s in all, several times what 20 people clicking cells make),
                to show the latency a save sees when the server is not saturated.

Afterwards every acknowledged save (201 or 200) is looked up in the database: the label must be
there, on its cell and round, at the acknowledged version with the acknowledged node, and its
history must hold an entry per acknowledged save; anything else counts as lost. Errors are
answers other than the expected 201/200, and failed connections.

Baselines, measured in the same run with the same number of requests from the same number of
threads:

    GET /health/       on the same gunicorn, right after the saves: the floor of the HTTP stack.
                       Same server, workers, connections and middleware, one database and two
                       Redis round trips, but no authentication, permission check or write; the
                       label save's figure against this one is what the save itself costs.
    psycopg2 writes    the floor of the database: the very rows a save writes (the label, then
                       its history entry; for a change an UPDATE with a version check and a
                       history entry), one transaction per save, one connection per thread.

Each save also schedules patch cutting after commit (annotator.tasks.schedule_patches: a Redis
`add` per save and at most one Celery message per scan per PATCH_BATCH_DELAY). No worker runs;
the messages go to an otherwise empty Redis database (`--celery-db`, default 14), emptied at the
end. The database (cytomark_bench_labels), the files and the cache keys are removed too.

    .venv/bin/python bench/labels.py [--clients 20] [--cells 50] [--patch-every 4]
                                     [--servers 2:8,4:1,5:4] [--pace 2] [--paced-cells 24]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import benchenv

DB_NAME = "cytomark_bench_labels"
SEED = 2019
P95_GOAL_MS = 50.0
HOST = "127.0.0.1"
WARMUP_REQUESTS = 5  # GET /health/ per client before the clock starts (baseline)
WARMUP_LABELS = 3  # labels per client before the clock starts


@dataclass
class Client:
    """One annotator: a token, a gold round and the cells it labels in each part of the run."""

    user_id: int
    round_id: int
    token: str
    cells: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Result:
    method: str
    seconds: float
    latencies_ms: list[float]
    errors: Counter
    lost: int | None = None
    detail: str = ""

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def pct(self, q: float) -> float:
        return benchenv.percentile(self.latencies_ms, q)


@dataclass
class Ack:
    """What the server acknowledged for one label: its last version and node."""

    cell: int
    round_id: int
    version: int
    node: str
    saves: int


# --- the load -------------------------------------------------------------------------------


def run_threads(count: int, work) -> tuple[float, list]:
    """Run ``work(index, start_gate)`` on ``count`` threads released together; returns the wall
    seconds from release to the last thread's end and what each returned."""
    gate = threading.Barrier(count + 1)
    results: list = [None] * count

    def target(index: int) -> None:
        try:
            results[index] = work(index, gate)
        except BaseException as exc:
            gate.abort()  # nobody waits for a thread that will never arrive
            results[index] = exc

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for result in results:
        if isinstance(result, BaseException) and not isinstance(
            result, threading.BrokenBarrierError
        ):
            raise RuntimeError("a client thread failed") from result
    return seconds, results


class Connection:
    """One keep-alive HTTP connection; reopened (and counted) when the server closes it."""

    def __init__(self, port: int, token: str | None = None):
        self.port = port
        self.headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Token {token}"
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def send(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        payload = json.dumps(body) if body is not None else None
        try:
            self.conn.request(method, path, body=payload, headers=self.headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()


def label_load(port: int, clients: list[Client], part: str, patch_every: int, pace: float = 0):
    """Every client POSTs a label for each of its cells and PATCHes every patch_every-th: as
    fast as answers come, or (``pace`` > 0) each save at its turn, ``pace`` saves a second.

    The first WARMUP_LABELS cells of each client are labelled before the clock starts (and are
    checked like the others), so that every server thread has made a save before it is timed.
    """

    def work(index: int, gate: threading.Barrier):
        client = clients[index]
        connection = Connection(port, client.token)
        acks, errors = {}, Counter()
        cells = client.cells[part]
        label_cells(connection, client, cells[:WARMUP_LABELS], patch_every, [], errors, acks)
        latencies, errors = [], Counter()
        gate.wait()
        # Paced clients start spread over one interval, so they do not all send at once.
        turn = time.perf_counter() + (index / len(clients) / pace if pace else 0)

        def wait_turn() -> None:
            nonlocal turn
            if pace:
                time.sleep(max(0.0, turn - time.perf_counter()))
                turn += 1 / pace

        label_cells(
            connection,
            client,
            cells[WARMUP_LABELS:],
            patch_every,
            latencies,
            errors,
            acks,
            wait_turn,
        )
        connection.close()
        return latencies, errors, acks

    return work


def label_cells(connection, client, cells, patch_every, latencies, errors, acks, wait=None):
    for number, cell in enumerate(cells):
        if wait:
            wait()
        body = {"cell": cell, "node": "NGS", "seconds_spent": 1.5}
        status, data = timed(connection, "POST", "/api/v1/labels/", body, latencies, errors)
        if status is None:
            continue
        if status != 201:
            errors[f"POST {status}"] += 1
            continue
        label = json.loads(data)
        acks[label["id"]] = Ack(cell, client.round_id, label["version"], label["node"], 1)
        if number % patch_every:
            continue
        if wait:
            wait()
        body = {"node": "LYT", "seconds_spent": 0.5, "version": label["version"]}
        path = f"/api/v1/labels/{label['id']}/"
        status, data = timed(connection, "PATCH", path, body, latencies, errors)
        if status is None:
            continue
        if status != 200:
            errors[f"PATCH {status}"] += 1
            continue
        changed = json.loads(data)
        ack = acks[label["id"]]
        ack.version, ack.node, ack.saves = changed["version"], changed["node"], ack.saves + 1


def health_load(port: int, per_client: list[int]):
    """The same number of requests per client, all `GET /health/`."""

    def work(index: int, gate: threading.Barrier):
        connection = Connection(port)
        for _ in range(WARMUP_REQUESTS):
            connection.send("GET", "/health/")
        latencies, errors = [], Counter()
        gate.wait()
        for _ in range(per_client[index]):
            status, _ = timed(connection, "GET", "/health/", None, latencies, errors)
            if status not in (None, 200):
                errors[f"GET {status}"] += 1
        connection.close()
        return latencies, errors, {}

    return work


def timed(connection: Connection, method, path, body, latencies: list, errors: Counter):
    started = time.perf_counter()
    try:
        status, data = connection.send(method, path, body)
    except (OSError, http.client.HTTPException) as exc:
        errors[f"{method} {type(exc).__name__}"] += 1
        return None, b""
    latencies.append((time.perf_counter() - started) * 1000)
    return status, data


def merge(method: str, seconds: float, results: list) -> tuple[Result, dict[int, Ack]]:
    latencies, errors, acks = [], Counter(), {}
    for found_latencies, found_errors, found_acks in results:
        latencies += found_latencies
        errors += found_errors
        acks.update(found_acks)
    return Result(method, seconds, latencies, errors), acks


# --- gunicorn -------------------------------------------------------------------------------


def start_gunicorn(workers: int, threads: int, log: Path) -> tuple[subprocess.Popen, int]:
    port = benchenv.free_port(HOST)
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread" if threads > 1 else "sync",
        "--threads",
        str(threads),
        "--keep-alive",
        "75",
        "--log-level",
        "warning",
        "--error-logfile",
        str(log),
    ]
    server = subprocess.Popen(command, cwd=benchenv.ROOT, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}; see {log}")
        try:
            status, _ = Connection(port).send("GET", "/health/")
            if status == 200:
                return server, port
        except OSError:
            pass
        time.sleep(0.2)
    benchenv.stop_server(server)
    raise RuntimeError(f"gunicorn did not answer /health/ within 60 s; see {log}")


# --- the database baseline ------------------------------------------------------------------


def psycopg2_load(db_url: str, clients: list[Client], node_ids: dict[str, int], patch_every):
    """The rows of the same saves, written with plain SQL: one transaction per save."""
    import psycopg2

    from annotator.models import Label, LabelChange

    label_table, change_table = Label._meta.db_table, LabelChange._meta.db_table
    insert_label = (
        f"INSERT INTO {label_table} (cell_id, round_id, node_id, cannot_classify, rater_id, "
        "seconds_spent, version, created_at, updated_at) "
        "VALUES (%s, %s, %s, false, %s, 1.5, 1, now(), now()) RETURNING id, version"
    )
    update_label = (
        f"UPDATE {label_table} SET node_id = %s, seconds_spent = seconds_spent + 0.5, "
        "version = version + 1, updated_at = now() WHERE id = %s AND version = %s "
        "RETURNING version"
    )
    insert_change = (
        f"INSERT INTO {change_table} (label_id, cell_id, cell_ref, round_id, action, "
        "old_node_id, old_cannot_classify, new_node_id, new_cannot_classify, changed_by_id, "
        "changed_at, seconds_spent) "
        "VALUES (%s, %s, %s, %s, %s, %s, false, %s, false, %s, now(), %s)"
    )
    ngs, lyt = node_ids["NGS"], node_ids["LYT"]

    def work(index: int, gate: threading.Barrier):
        client = clients[index]

        def change(label_id, cell, action, old_node, new_node, seconds):
            """The values of a history entry (insert_change's placeholders, in order)."""
            user, round_id = client.user_id, client.round_id
            return (label_id, cell, cell, round_id, action, old_node, new_node, user, seconds)

        connection = psycopg2.connect(db_url)
        latencies, errors, acks = [], Counter(), {}
        gate.wait()
        with connection.cursor() as cursor:
            for number, cell in enumerate(client.cells["sql"]):
                started = time.perf_counter()
                cursor.execute(insert_label, (cell, client.round_id, ngs, client.user_id))
                label_id, version = cursor.fetchone()
                cursor.execute(insert_change, change(label_id, cell, "create", None, ngs, 1.5))
                connection.commit()
                latencies.append((time.perf_counter() - started) * 1000)
                acks[label_id] = Ack(cell, client.round_id, version, "NGS", 1)
                if number % patch_every:
                    continue
                started = time.perf_counter()
                cursor.execute(update_label, (lyt, label_id, version))
                (version,) = cursor.fetchone()
                cursor.execute(insert_change, change(label_id, cell, "update", ngs, lyt, 0.5))
                connection.commit()
                latencies.append((time.perf_counter() - started) * 1000)
                acks[label_id] = Ack(cell, client.round_id, version, "LYT", 2)
        connection.close()
        return latencies, errors, acks

    return work


# --- checks ---------------------------------------------------------------------------------


def count_lost(acks: dict[int, Ack]) -> tuple[int, str]:
    """Acknowledged saves missing from the database (a label absent, or at an older version or
    another node than acknowledged, or with fewer history entries than acknowledged saves)."""
    from django.db.models import Count

    from annotator.models import Label

    stored = {
        row["id"]: row
        for row in Label.objects.filter(pk__in=list(acks))
        .annotate(changes=Count("history"))
        .values("id", "cell_id", "round_id", "version", "node__code", "changes")
    }
    lost, extra = 0, 0
    for label_id, ack in acks.items():
        row = stored.get(label_id)
        if (
            row is None
            or (row["cell_id"], row["round_id"]) != (ack.cell, ack.round_id)
            or row["version"] < ack.version
            or row["node__code"] != ack.node
            or row["changes"] < ack.saves
        ):
            lost += 1
        elif row["version"] > ack.version or row["changes"] > ack.saves:
            extra += 1
        # A save that was made but never acknowledged (an error on the way back) is not lost.
    detail = f"{len(acks)} labels checked" + (
        f", {extra} with unacknowledged saves" if extra else ""
    )
    return lost, detail


# --- set-up and report ----------------------------------------------------------------------


def make_clients(folder: Path, count: int, parts: dict[str, int]) -> list[Client]:
    """``count`` annotators with tokens and gold rounds, each with ``parts[part]`` cells of its
    own for every part of the run, on one synthetic scan of the bench study."""
    import random

    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from annotator.annotation import gold_round_for
    from annotator.models import Cell, Membership

    User = get_user_model()
    owner = User.objects.create_user("bench-coordinator")
    study, scan, _ = benchenv.register_scan(folder, size=3000, cells=20, seed=SEED, user=owner)
    Membership.objects.create(study=study, user=owner, role=Membership.Role.COORDINATOR)
    rng = random.Random(SEED)
    clients = []
    for index in range(count):
        user = User.objects.create_user(f"bench-annotator-{index:02d}")
        Membership.objects.create(study=study, user=user, role=Membership.Role.ANNOTATOR)
        # Made here so that no part of the run pays for the first label's round.
        round_ = gold_round_for(study, user)
        client = Client(user.pk, round_.pk, Token.objects.create(user=user).key)
        for part, cells in parts.items():
            made = Cell.objects.bulk_create(
                Cell(
                    study=study,
                    scan=scan,
                    x=rng.randrange(scan.width),
                    y=rng.randrange(scan.height),
                    created_by=user,
                )
                for _ in range(cells)
            )
            client.cells[part] = [cell.pk for cell in made]
        clients.append(client)
    return clients


def row(result: Result, reference: Result | None) -> str:
    errors = sum(result.errors.values())
    lost = "-" if result.lost is None else str(result.lost)
    ratio = f"{result.rate / reference.rate:10.2f}x" if reference else f"{'-':>11}"
    return (
        f"{result.method:<38} {result.rate:8.0f} {result.pct(50):8.1f} {result.pct(95):8.1f} "
        f"{max(result.latencies_ms, default=0):8.1f} {errors:6d} {lost:>5} {ratio}"
    )


def parse_servers(text: str) -> list[tuple[int, int]]:
    servers = []
    for item in text.split(","):
        workers, _, threads = item.strip().partition(":")
        servers.append((int(workers), int(threads or 1)))
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="concurrent annotators")
    parser.add_argument("--cells", type=int, default=50, help="cells each client labels")
    parser.add_argument("--patch-every", type=int, default=4, help="PATCH every n-th label")
    parser.add_argument(
        "--servers",
        default="2:8,4:1,5:4",
        help="gunicorn settings to try, workers:threads, comma-separated (threads 1 = sync)",
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=2.0,
        help="saves a second per client in the paced run on the best server (0: no paced run)",
    )
    parser.add_argument(
        "--paced-cells", type=int, default=24, help="cells each paced client labels"
    )
    parser.add_argument("--redis-db", type=int, default=10, help="Redis database of the cache")
    parser.add_argument("--celery-db", type=int, default=14, help="empty Redis db for Celery")
    args = parser.parse_args()
    servers = parse_servers(args.servers)

    benchenv.require_empty_redis_db(args.celery_db, "--celery-db")
    with (
        tempfile.TemporaryDirectory(prefix="cytomark-bench-labels-") as folder,
        benchenv.temporary_database(DB_NAME) as db_url,
    ):
        env = benchenv.project_env(
            settings="config.settings.production",
            db_url=db_url,
            folder=Path(folder),
            redis_db=args.redis_db,
            celery_db=args.celery_db,
            SECRET_KEY=secrets.token_urlsafe(64),
            ALLOWED_HOSTS=f"{HOST},localhost",
            SECURE_SSL_REDIRECT="False",
        )
        benchenv.setup_django(env)
        try:
            run_benchmark(Path(folder), db_url, servers, args)
        finally:
            benchenv.delete_redis_keys(args.redis_db, f"{env['CACHE_KEY_PREFIX']}:*")
            purged = benchenv.delete_redis_keys(args.celery_db, "*")
            print(f"\nRedis database {args.celery_db} (Celery) emptied: {purged} keys removed")


def run_benchmark(folder: Path, db_url: str, servers: list[tuple[int, int]], args) -> None:
    from django.db import connections

    from annotator.models import Study, TaxonNode

    parts = {server_name(*server): WARMUP_LABELS + args.cells for server in servers}
    parts |= {"sql": args.cells, "paced": WARMUP_LABELS + args.paced_cells}
    clients = make_clients(folder, args.clients, parts)
    study = Study.objects.get(name=benchenv.STUDY)
    node_ids = dict(
        TaxonNode.objects.filter(taxonomy=study.taxonomy_id, code__in=["NGS", "LYT"]).values_list(
            "code", "pk"
        )
    )
    connections.close_all()
    saves = args.cells + len(range(0, args.cells, args.patch_every))
    print(
        f"{args.clients} clients x {saves} saves each ({args.cells} POSTs, "
        f"{saves - args.cells} PATCHes with versions), each client sending its next request "
        f"when the last is answered; {os.cpu_count()} CPU cores"
    )

    rows: list[tuple[Result, Result | None]] = []
    best: tuple[Result, Result, tuple[int, int]] | None = None
    for workers, threads in servers:
        name = server_name(workers, threads)
        server, port = start_gunicorn(workers, threads, folder / "gunicorn.log")
        try:
            seconds, results = run_threads(
                args.clients, label_load(port, clients, name, args.patch_every)
            )
            labels, acks = merge(f"labels API, {name}", seconds, results)
            per_client = [len(found[0]) for found in results]
            seconds, results = run_threads(args.clients, health_load(port, per_client))
            health, _ = merge(f"/health/, {name}", seconds, results)
        finally:
            benchenv.stop_server(server)
        labels.lost, labels.detail = count_lost(acks)
        rows += [(labels, health), (health, None)]
        if best is None or labels.rate > best[0].rate:
            best = (labels, health, (workers, threads))
        connections.close_all()

    seconds, results = run_threads(
        args.clients, psycopg2_load(db_url, clients, node_ids, args.patch_every)
    )
    sql_result, acks = merge("psycopg2 INSERT/UPDATE + history", seconds, results)
    sql_result.lost, sql_result.detail = count_lost(acks)

    labels, health, best_server = best
    paced = None
    if args.pace > 0:
        server, port = start_gunicorn(*best_server, folder / "gunicorn.log")
        try:
            seconds, results = run_threads(
                args.clients, label_load(port, clients, "paced", args.patch_every, args.pace)
            )
        finally:
            benchenv.stop_server(server)
        paced, acks = merge(f"labels API paced, {args.pace:g}/s/client", seconds, results)
        paced.lost, paced.detail = count_lost(acks)
    connections.close_all()

    print()
    header = f"{'method':<38} {'saves/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
    print(f"{header} {'errors':>6} {'lost':>5} {'vs /health/':>11}")
    for result, reference in rows:
        print(row(result, reference))
    print(row(sql_result, None))
    if paced:
        print(row(paced, None) + f"   ({server_name(*best_server)})")
    everything = [result for result, _ in rows] + [sql_result] + ([paced] if paced else [])
    for result in everything:
        if result.errors:
            print(f"errors of {result.method}: {dict(result.errors)}")
        if result.detail:
            print(f"checked {result.method}: {result.detail}")

    print(
        f"\nbest: {labels.method}: {labels.rate:.0f} saves/s, p95 {labels.pct(95):.1f} ms; "
        f"{labels.rate / health.rate:.2f}x the rate of /health/ on the same server "
        f"(p95 {labels.pct(95) / health.pct(95):.1f}x), {labels.rate / sql_result.rate:.3f}x "
        f"that of plain psycopg2 writes (p95 {labels.pct(95) / sql_result.pct(95):.1f}x)"
    )
    for result in [labels] + ([paced] if paced else []):
        errors = sum(result.errors.values())
        goals = [
            (
                f"p95 under {P95_GOAL_MS:g} ms",
                result.pct(95) < P95_GOAL_MS,
                f"{result.pct(95):.1f} ms",
            ),
            ("zero errors", errors == 0, str(errors)),
            ("zero lost", result.lost == 0, str(result.lost)),
        ]
        for goal, met, value in goals:
            print(f"goal ({result.method}): {goal}: {value} -> {'met' if met else 'NOT met'}")


def server_name(workers: int, threads: int) -> str:
    return f"gunicorn {workers}w x {threads}t" + (" sync" if threads == 1 else "")


if __name__ == "__main__":
    main()
