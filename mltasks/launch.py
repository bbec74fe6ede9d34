"""Starting a data-parallel run's processes with torchrun and watching them from the training
task, which keeps the run's lease meanwhile.

The task's worker starts `torchrun` (as `python -m torch.distributed.run`) in a session of its
own, with `manage.py train_rank` as each rank's program. The ranks report progress, stop on a
cancel and record the run's end themselves (the leader, `mltasks.distributed`); this module
stops them when the run is cancelled, its lease is lost or the worker shuts down, and tells the
caller how they ended, with the first failing rank's sentence. Should the worker itself die,
the kernel sends torchrun SIGTERM (the parent-death signal), which ends the ranks; the run's
lease then runs out and the sweep recovers it as for any other job.

Several hosts: the task's host runs the rendezvous (`TRAINING_RENDEZVOUS`, host:port); each
other host runs `manage.py join_training --run ID`, which starts the same torchrun there.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from . import run_config

log = logging.getLogger(__name__)

WATCH_EVERY_SECONDS = 0.5
# After SIGTERM, how long the ranks have to end before they are killed.
STOP_GRACE_SECONDS = 10
# The folder (in each rank's environment) where a failing rank writes its sentence.
ERRORS_ENV = "CYTOMARK_RANK_ERRORS"
# The kernel's number for prctl's "signal me when my parent dies" (linux/prctl.h).
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ended:
    """How the ranks ended: torchrun's exit code, whether they were stopped from here, and the
    first failing rank's sentence ("" when none wrote one)."""

    code: int
    stopped: bool
    error: str
    log_tail: str


def torchrun_command(run_id: int, config: dict, owner: str, node: str = "first") -> list[str]:
    """The torchrun command line of a run on one host: the rendezvous on this host for a
    one-host run; on `TRAINING_RENDEZVOUS` for several hosts (`node` "first" or "joined")."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={config['processes']}",
        "--max_restarts=0",
    ]
    if config["hosts"] == 1:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={config['hosts']}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={settings.TRAINING_RENDEZVOUS}",
            f"--rdzv_id=cytomark-run-{run_id}-{owner}",
        ]
        # The first host serves the rendezvous store; the others only connect to it.
        command.append(f"--rdzv_conf=is_host={'true' if node == 'first' else 'false'}")
    return [*command, str(Path(settings.BASE_DIR) / "manage.py"), "train_rank", str(run_id), owner]


def join(run_id: int, wait_seconds: float) -> int:
    """This host's part of a run across hosts: once a worker has started the run, the same
    torchrun, joined to its rendezvous, in the foreground; torchrun's exit code."""
    from core.errors import DomainError

    from .models import TrainingRun

    deadline = time.monotonic() + wait_seconds
    while True:
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None:
            raise DomainError(f"There is no training run {run_id}.")
        if run.config.get("hosts", 1) < 2:
            raise DomainError(f"Training run {run_id} trains on one host; nothing to join.")
        if run.status == TrainingRun.Status.RUNNING and run.lease_owner:
            break
        if run.status != TrainingRun.Status.QUEUED:
            raise DomainError(f"Training run {run_id} has ended ({run.status}).")
        if time.monotonic() > deadline:
            raise DomainError(f"Training run {run_id} did not start within {wait_seconds:g} s.")
        time.sleep(1)
    env = dict(os.environ)
    if threads := _threads(run.config):
        env["OMP_NUM_THREADS"] = str(threads)
    command = torchrun_command(run.pk, run.config, run.lease_owner, node="joined")
    return subprocess.run(command, env=env, check=False).returncode


def _die_with_parent() -> None:
    """In the child before torchrun starts: SIGTERM when the worker that started it dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_ranks(
    run_id: int, command: list[str], config: dict, should_stop: Callable[[], bool]
) -> Ended:
    """Run `command` (torchrun) of the run to its end, stopping it when `should_stop` says so.
    Its output and the ranks' sentences go to a folder under VAR_DIR/ranks, removed at the
    end; one an earlier attempt's killed worker left is removed when the run starts again."""
    root = _ranks_root()
    for earlier in root.glob(f"run-{run_id}-*"):
        shutil.rmtree(earlier, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"run-{run_id}-", dir=root))
    env = {**os.environ, ERRORS_ENV: str(folder)}
    if threads := _threads(config):
        env["OMP_NUM_THREADS"] = str(threads)
    output = folder / "torchrun.log"
    stopped = False
    try:
        with output.open("wb") as sink:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            while process.poll() is None:
                if should_stop():
                    stopped = True
                    _stop(process)
                    break
                time.sleep(WATCH_EVERY_SECONDS)
        finally:
            if process.poll() is None:
                _stop(process)
            with contextlib.suppress(ProcessLookupError):  # a rank torchrun left behind
                os.killpg(process.pid, signal.SIGKILL)
        errors = sorted(folder.glob("rank-*.error"))
        tail = output.read_text(errors="replace")[-4000:]
        if process.returncode and not stopped:
            log.warning("torchrun ended with exit code %s:\n%s", process.returncode, tail)
        return Ended(
            process.returncode, stopped, errors[0].read_text() if errors else "", log_tail=tail
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def threads_per_process(config: dict) -> int | None:
    """CPU threads of each training process: the config's, else the host's cores shared out
    between its processes (None: PyTorch's default, for a single process)."""
    if config["threads"] or config["processes"] == 1:
        return config["threads"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // config["processes"])


def _threads(config: dict) -> int | None:
    return threads_per_process(config) if run_config.distributed(config) else None


def _ranks_root() -> Path:
    root = Path(settings.VAR_DIR) / "ranks"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to torchrun and its ranks (their session), SIGKILL to what outlives the grace."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return
        try:
            process.wait(STOP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue
