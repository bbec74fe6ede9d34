"""`make run`'s lifecycle with the real script (deploy/run-embedded.sh): its own processes,
SQLite database, file-system broker and var/ folder in a temporary folder, on a free port.

It comes up with a quiet terminal (requests logged to var/log/), a second start in the same
folder is refused before it touches anything, and a Ctrl-C (SIGINT to the script's process
group, as a terminal sends it) during a training run stops every process within about 10 s and
leaves the run cancelled with a sentence. Needs no PostgreSQL or Redis; takes about a minute.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .test_job_recovery import wait_until

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "run-embedded.sh"
SEED_ARGS = "--scans 2 --size 3000 --cells 16"
# A run quick to start and far from done after a minute: tiny images, endless epochs.
ENDLESS_RUN = """
from django.contrib.auth import get_user_model
from django.db import transaction
from annotator.models import Study
from datasets import classmaps, splits, versions
from mltasks import runs, tasks

study = Study.objects.get(name="demo-aml")
user = get_user_model().objects.get(username="datascientist")
class_map, _ = classmaps.save_class_map(study, "merged", classmaps.propose(study), user)
version, _ = versions.make_dataset(study, "aml", user, class_map=class_map)
split, _ = splits.make_split(version, "patient-kfold", user, k=2, seed=0)
config = {"image_size": 32, "batch_size": 4, "max_epochs": 10000, "patience": 10000,
          "oversample_to": 50, "threads": 1, "saliency_samples": 0}
with transaction.atomic():
    run = runs.start_run(split, user, config)
    tasks.queue_run(run)
print(run.pk)
"""

pytestmark = pytest.mark.lifecycle


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Instance:
    """One `make run` of the script in a temporary var/ folder."""

    def __init__(self, var: Path, port: int):
        self.var, self.port = var, port
        self.url = f"http://127.0.0.1:{port}/"
        self.terminal = var.parent / "terminal.txt"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "MEDIA_ROOT")
            and not key.startswith("CELERY_")
        }
        self.env.update(VAR_DIR=str(var), PORT=str(port), PY=sys.executable, SEED_ARGS=SEED_ARGS)
        self.process: subprocess.Popen | None = None
        self.worker = 0
        self.web = 0

    def start(self, output: Path) -> subprocess.Popen:
        """The script in a new process group, SIGINT not ignored (as from a terminal)."""
        with output.open("wb") as handle:
            return subprocess.Popen(
                ["bash", str(SCRIPT)],
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )

    def get(self, path: str, opener=None) -> int:
        try:
            opener = opener or urllib.request.build_opener()
            with opener.open(self.url + path.lstrip("/"), timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def database(self, query: str) -> list:
        with sqlite3.connect(self.var / "db.sqlite3", timeout=30) as db:
            return db.execute(query).fetchall()

    def worker_pid(self) -> int:
        """The worker's pid, which the script records in var/run.lock (pid, address, worker,
        web server)."""
        return int((self.var / "run.lock").read_text().split()[2])

    def web_pid(self) -> int:
        """The web server's pid (in a process group of its own, like the worker)."""
        return int((self.var / "run.lock").read_text().split()[3])

    def processes(self) -> list:
        """How to signal the script's group, its worker and its web server; one not yet known
        (pid 0) is left out, since signalling pid 0 would reach this test's own process group."""
        targets = [(os.killpg, self.process.pid)]
        targets += [(os.kill, pid) for pid in (self.worker, self.web) if pid > 0]
        return targets

    def alive(self) -> bool:
        """Whether any process of the script's group, its worker or its web server (each in a
        group of its own) lives; the script itself reaped first."""
        self.process.poll()
        for kill, pid in self.processes():
            try:
                kill(pid, 0)
                return True
            except ProcessLookupError:
                pass
        return False

    def manage_shell(self, code: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    folder = tmp_path_factory.mktemp("make-run")
    running = Instance(folder / "var", free_port())
    running.process = running.start(running.terminal)
    try:
        wait_until(
            lambda: running.get("/health/") == 200 or running.process.poll() is not None,
            90,
            "the embedded instance answering /health/",
        )
        assert running.process.poll() is None, running.terminal.read_text()
        running.worker = running.worker_pid()
        running.web = running.web_pid()
        yield running
    finally:
        for kill, pid in running.processes():
            with contextlib.suppress(ProcessLookupError):
                kill(pid, signal.SIGKILL)
        running.process.wait()


def logged_in(instance: Instance, username: str):
    """An opener with the session of a demo login, logged in through the login page."""
    password = json.loads((instance.var / "demo-logins.json").read_text())[username]
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    page = opener.open(instance.url + "login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    request = urllib.request.Request(
        instance.url + "login/", data=form, headers={"Referer": instance.url + "login/"}
    )
    opener.open(request, timeout=10)
    return opener


def test_it_comes_up_with_the_address_on_the_terminal_and_requests_in_the_log(instance):
    opener = logged_in(instance, "annotator")
    tile = "/api/v1/scans/1/tiles/scan_files/8/0_0.jpeg"
    assert instance.get(tile, opener) == 200
    assert instance.get("/", opener) == 200
    assert instance.get("/no-such-page/", opener) == 404

    terminal = instance.terminal.read_text()
    assert f"Cytomark is running at {instance.url}" in terminal
    assert "annotator" in terminal and "datascientist" in terminal  # the demo logins
    assert f"{instance.var}/log/access.log" in terminal
    assert "GET /" not in terminal and "tiles/scan_files" not in terminal
    assert "Not Found" not in terminal and "Applying " not in terminal
    assert "registered scan" not in terminal  # seeding says the logins, not each step
    access = wait_until(
        lambda: (
            (text := (instance.var / "log" / "access.log").read_text()) and tile in text and text
        ),
        10,
        "the tile request in var/log/access.log",
    )
    assert '"GET / HTTP/1.1" 200' in access
    worker_log = instance.var / "log" / "worker.log"
    wait_until(lambda: "ready." in worker_log.read_text(), 60, "the worker's start logged")


def test_a_second_start_in_the_same_folder_is_refused_and_touches_nothing(instance):
    logins = instance.var / "demo-logins.json"
    before = (
        logins.stat().st_mtime_ns,
        (instance.var / "log" / "setup.log").stat().st_size,
        instance.database("select count(*) from annotator_scan"),
    )
    second_output = instance.var.parent / "second.txt"
    started = time.monotonic()
    second = instance.start(second_output)
    assert second.wait(timeout=10) != 0
    assert time.monotonic() - started < 5
    said = second_output.read_text()
    assert (
        f"Cytomark is already running at {instance.url} (pid {instance.process.pid}); "
        "stop it with Ctrl-C in its terminal." in said
    )
    assert "Preparing the database" not in said
    after = (
        logins.stat().st_mtime_ns,
        (instance.var / "log" / "setup.log").stat().st_size,
        instance.database("select count(*) from annotator_scan"),
    )
    assert after == before  # not migrated, not seeded again
    assert instance.process.poll() is None and instance.get("/health/") == 200


def test_a_port_taken_by_another_program_is_named(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        elsewhere = Instance(tmp_path / "var", other.getsockname()[1])
        output = tmp_path / "out.txt"
        assert elsewhere.start(output).wait(timeout=10) != 0
    said = output.read_text()
    assert f"Port {elsewhere.port} on 127.0.0.1 is in use by another program" in said
    assert not (tmp_path / "var" / "db.sqlite3").exists()


def test_ctrl_c_during_a_training_run_stops_everything_and_cancels_the_run(instance):
    assert instance.alive()
    run_id = int(instance.manage_shell(ENDLESS_RUN).split()[-1])
    wait_until(
        lambda: instance.database(
            f"select 1 from mltasks_trainingrun where id = {run_id} and status = 'running' "
            "and progress like '%\"epoch\"%'"
        ),
        90,
        "the training run in its first epoch",
    )
    pressed = time.monotonic()
    os.killpg(instance.process.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(instance.process.pid, signal.SIGINT)  # an impatient second Ctrl-C changes nothing
    wait_until(lambda: not instance.alive(), 12, "every process of make run stopped")
    print(f"stopped in {time.monotonic() - pressed:.1f} s")

    [(status, error)] = instance.database(
        f"select status, error from mltasks_trainingrun where id = {run_id}"
    )
    assert status == "cancelled"
    assert re.fullmatch(
        r"Stopped because Cytomark was shut down \(Ctrl-C\) during fold 1 of 2, epoch \d+; "
        r"start it again to train\.",
        error,
    ), error
    terminal = instance.terminal.read_text()
    assert "Cytomark has stopped." in terminal and "Traceback" not in terminal
    assert "did not stop" not in terminal  # the run stopped at its step; nothing was killed
    # The web server heard the Ctrl-C from the script, not from the terminal by itself.
    assert "stopped by itself" not in terminal
