"""One job runner for every benchmark that runs several trainings (README: "More than one machine").

A job is one real process (``python -m agent train ...``, or a benchmark's own worker entry) in its run
directory, logging to ``stdout.log``; it declares its torch threads (and GPU share) as Ray resources, so
Ray starts as many at once as the CPUs (GPUs) allow. Ray starts inside this process with this machine's
CPUs (``--cpus`` to use fewer), or the jobs go to a running cluster (``--address HOST:PORT`` or
``RAY_ADDRESS``; run directories must then be on storage every node mounts at the same path); without Ray
(not installed, or ``--no-ray``) they run one after another. A job that fails is reported with its log's
last lines and started again up to ``--retries`` times, from its checkpoint once there is one.
Run directories are locked (``.sweep.lock``) for the whole sweep; the lock of a sweep that died on this
machine is taken over.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK = ".sweep.lock"
LOG = "stdout.log"
TAIL_LINES = 20


@dataclass(frozen=True)
class Job:
    """One process of a sweep: ``python <argv>`` in ``rundir`` (absolute), logging to ``rundir/stdout.log``."""

    name: str
    rundir: str
    argv: tuple[str, ...]  # after the interpreter, e.g. ("-m", "agent", "train", "--logdir", ...)
    resume_argv: tuple[str, ...] | None = None  # used instead once ``rundir/checkpoint.pt`` exists
    cpus: float = 1.0  # Ray resources: the job's torch threads
    gpus: float = 0.0

    def command(self) -> tuple[str, ...]:
        """The arguments of the next attempt: ``resume_argv`` once there is a checkpoint to resume from."""
        if self.resume_argv is not None and (Path(self.rundir) / "checkpoint.pt").exists():
            return self.resume_argv
        return self.argv


@dataclass
class Outcome:
    """How a job ended: ``ok``, the attempts it took, the seconds its attempts ran (all of them), and for a
    failure the last error and log tail."""

    job: Job
    ok: bool
    attempts: int
    wall_s: float
    error: str = ""
    log_tail: str = ""


# --------------------------------------------------------------------------------------------- one attempt


# Runs the job's command after asking the kernel to send it SIGTERM when its parent (the Ray worker, or this
# process without Ray) dies (Linux; elsewhere it just runs it): a killed worker leaves no training behind.
# A trampoline rather than preexec_fn, which is unsafe in a process with threads (a Ray worker has several).
_TRAMPOLINE = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 200 * lines))
            return "\n".join(file.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt inside the block even in a process that inherited it ignored (one
    started with ``&`` from a script): Ray's ``cancel`` of a running task interrupts it that way."""
    main = _main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if main:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_attempt(job: Job, cwd: str) -> dict[str, Any]:
    """Run one attempt of ``job`` with this machine's Python and wait for it; returns ``returncode``,
    ``wall_s``, ``host`` and, for a failure, ``error`` and ``log_tail``. This is the Ray task (and the
    fallback's whole runner); an interrupt (``ray.cancel``, Ctrl-C) stops the job's process group."""
    rundir, host = Path(job.rundir), socket.gethostname()
    if not rundir.is_dir():
        return {"returncode": None, "wall_s": 0.0, "host": host, "log_tail": "",
                "error": f"run directory {rundir} does not exist on {host}: with a Ray cluster, put the run "
                         "directories on storage that every node mounts at the same path"}
    cmd = [sys.executable, *job.command()]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.time()
    with _interruptible(), open(rundir / LOG, "a") as log:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"=== {stamp} on {host}: {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, str(os.getpid()), *cmd[1:]], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd if os.path.isdir(cwd) else rundir,
                                start_new_session=True)
        try:
            while (code := proc.poll()) is None:  # polling, so that an interrupt (ray.cancel) gets through
                time.sleep(0.5)
        except BaseException:  # cancelled or interrupted: the job stops too (its checkpoint stays)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    out = {"returncode": code, "wall_s": time.time() - start, "host": host}
    if code != 0:
        out.update(error=f"exit {code} on {host}", log_tail=log_tail(rundir / LOG))
    return out


# --------------------------------------------------------------------------------------------- locks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SweepLocked(ValueError):
    """A run directory is being written by another sweep."""


def _acquire(rundir: Path) -> Path:
    rundir.mkdir(parents=True, exist_ok=True)
    path = rundir / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, ValueError):
                owner = {}
            if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                print(f"taking over the lock of a sweep that is gone (pid {owner['pid']}): {path}", flush=True)
                path.unlink(missing_ok=True)
                continue
            if not owner:  # being written this instant, or garbage: look again
                time.sleep(0.2)
                continue
            raise SweepLocked(f"{rundir} is being written by another sweep (pid {owner.get('pid')} on "
                              f"{owner.get('host')} since {owner.get('since')}: {' '.join(owner.get('argv', []))}); "
                              f"wait for it to finish, or delete {path} if that sweep is gone.") from None
        with os.fdopen(fd, "w") as file:
            json.dump(me, file)
        return path
    raise SweepLocked(f"could not lock {path}; delete it if no sweep is writing {rundir}.")


@contextlib.contextmanager
def locked(rundirs: list[Path]) -> Iterator[None]:
    """Hold the sweep lock of every directory in ``rundirs`` (created if needed) for the ``with`` block; a
    directory another live sweep holds raises ``SweepLocked`` (a ``ValueError``) before anything else."""
    held: list[Path] = []
    try:
        for rundir in dict.fromkeys(Path(d) for d in rundirs):
            held.append(_acquire(rundir))
        yield
    finally:
        for path in held:
            path.unlink(missing_ok=True)


def clear(rundir: Path) -> None:
    """Empty a run directory for a fresh start, keeping this sweep's lock."""
    import shutil

    if not rundir.exists():
        return
    for entry in rundir.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# --------------------------------------------------------------------------------------------- the runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's command-line options, the same in every benchmark that uses it."""
    g = parser.add_argument_group("jobs (Ray)")
    g.add_argument("--address", default=None,
                   help="a running Ray cluster (HOST:PORT; default $RAY_ADDRESS); without one, Ray starts locally. "
                        "Run directories must then be on storage every node mounts at the same path")
    g.add_argument("--cpus", type=int, default=None, help="CPUs the local Ray may use (default: all of this machine's)")
    g.add_argument("--retries", type=int, default=1, help="times a failed job is started again (from its checkpoint)")
    g.add_argument("--gpus-per-job", type=float, default=1.0,
                   help="share of a GPU that a job whose agent runs on CUDA declares (0.5: two per GPU)")
    g.add_argument("--no-ray", action="store_true", help="run jobs one after another in subprocesses, without Ray")
    g.add_argument("--parallel", type=int, default=None,
                   help="most runs at a time (default: as many as the CPUs hold, one per torch thread)")


def runner_from_args(args: argparse.Namespace) -> Runner:
    """A ``Runner`` configured by ``add_arguments``' options."""
    return Runner(address=args.address, cpus=args.cpus, retries=args.retries, use_ray=not args.no_ray,
                  parallel=args.parallel)


def run_sweep(args: argparse.Namespace, rundirs: list[Path], plan: Callable[[], list[Job]],
              on_success: Callable[[Outcome], None] | None = None) -> list[str]:
    """A benchmark's sweep: the ``Runner`` of ``add_arguments``' options (built first, so that a bad option
    fails before anything is locked or emptied), then the lock of every directory in ``rundirs`` held while
    ``plan()`` makes the jobs (it may empty run directories) and while they run. Returns the names of the jobs
    that still failed, after a line on stderr that names them."""
    runner = runner_from_args(args)
    with locked(rundirs):
        outcomes = runner.run(plan(), on_success)
    failed = [o.job.name for o in outcomes if not o.ok]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; the same command resumes them", file=sys.stderr,
              flush=True)
    return failed


def cpus_for_threads(threads: int) -> float:
    """The CPUs a job declares for ``threads`` torch threads (0: all of this machine's)."""
    return float(threads if threads > 0 else os.cpu_count() or 1)


class Runner:
    """Runs jobs on Ray (local or a cluster) or one after another; see the module docstring."""

    def __init__(self, address: str | None = None, cpus: int | None = None, retries: int = 1,
                 use_ray: bool = True, parallel: int | None = None, out: Callable[[str], None] | None = None):
        if retries < 0 or (parallel is not None and parallel < 1) or (cpus is not None and cpus < 1):
            raise ValueError(f"retries must be >= 0, parallel and cpus >= 1; got {retries}, {parallel}, {cpus}.")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus = cpus
        self.retries = retries
        self.parallel = parallel
        self.use_ray = use_ray
        self.out = out or (lambda line: print(line, flush=True))
        if self.address and self.use_ray:
            self._check_reachable()  # before a sweep locks or empties anything

    def _ray(self) -> Any | None:
        """The ray module, connected; None when it is not installed or not wanted."""
        if not self.use_ray:
            return None
        try:
            import ray
        except ImportError:
            self.out("Ray is not installed (pip install 'tubedreamer[cluster]'): running jobs one after another.")
            return None
        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError) as error:
                raise ValueError(
                    f"could not connect to the Ray cluster at {self.address} ({str(error).splitlines()[0]}). Is it "
                    "running (`ray start --head` prints its address)? A cluster with token authentication "
                    "also needs RAY_AUTH_MODE=token here and its token (`ray get-auth-token` on the head, "
                    "in ~/.ray/auth_token or $RAY_AUTH_TOKEN).") from error
        else:
            ray.init(address="local", num_cpus=self.cpus or os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR", object_store_memory=200 * 2**20)
        return ray

    def _check_reachable(self) -> None:
        """Fail at once when nothing listens at a HOST:PORT address (Ray itself retries for minutes)."""
        host, _, port = self.address.rpartition(":")
        if "://" in self.address or not host or not port.isdigit():
            return  # "auto", "ray://...": Ray's own checks
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as error:
            raise ValueError(f"nothing answers at the Ray cluster address {self.address} ({error}); start the "
                             "cluster's head with `ray start --head` and pass the address it prints.") from error

    def run(self, jobs: list[Job], on_success: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        """Run every job (failed ones again, up to ``retries`` times); ``on_success`` is called in this
        process as each job succeeds. Returns one outcome per job. Interrupting this process (Ctrl-C,
        SIGTERM) stops the running jobs; their checkpoints stay for the next call."""
        if not jobs:
            return []
        for job in jobs:
            Path(job.rundir).mkdir(parents=True, exist_ok=True)
        ray = self._ray()
        previous = {}
        self._stop = None
        if _main_thread():
            # After ray.init, which installs a SIGTERM handler of its own that aborts. With Ray the handlers
            # only note the signal and the loop raises between Ray calls, not inside one. Without Ray, SIGTERM
            # raises at once and runs the finally blocks.
            def note(signum: int, frame: Any) -> None:
                self._stop = signum

            handler = note if ray is not None else (lambda *_: sys.exit(143))
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, handler)
            if ray is not None:
                previous[signal.SIGINT] = signal.signal(signal.SIGINT, note)
        try:
            if ray is None:
                return self._run_here(jobs, on_success)
            return self._run_ray(ray, jobs, on_success)
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
            if ray is not None:
                ray.shutdown()

    def _finish(self, job: Job, attempt: int, result: dict[str, Any], spent: float, outcomes: dict[str, Outcome],
                on_success: Callable[[Outcome], None] | None) -> bool:
        """Record one attempt's result; True when the job should be started again."""
        if result.get("returncode") == 0:
            outcome = Outcome(job, True, attempt, spent)
            outcomes[job.rundir] = outcome
            self.out(f"finished {job.name} in {spent / 60:.1f} min" + (f" ({attempt} attempts)" if attempt > 1 else ""))
            if on_success is not None:
                on_success(outcome)
            return False
        tail = result.get("log_tail") or log_tail(Path(job.rundir) / LOG)
        again = attempt <= self.retries
        self.out(f"{job.name} FAILED ({result.get('error', 'unknown error')}), attempt {attempt} of "
                 f"{self.retries + 1}{'; starting it again' if again else ''}. Last lines of "
                 f"{Path(job.rundir) / LOG}:\n" + "\n".join(f"    {line}" for line in tail.splitlines()))
        outcomes[job.rundir] = Outcome(job, False, attempt, spent, result.get("error", ""), tail)
        return again

    def _run_here(self, jobs: list[Job], on_success: Callable[[Outcome], None] | None) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        for job in jobs:
            attempt, spent = 0, 0.0
            while True:
                attempt += 1
                self.out(f"started {job.name}" + (f" (attempt {attempt})" if attempt > 1 else ""))
                result = run_attempt(job, os.getcwd())
                spent += result["wall_s"]
                if not self._finish(job, attempt, result, spent, outcomes, on_success):
                    break
        return [outcomes[job.rundir] for job in jobs]

    def _run_ray(self, ray: Any, jobs: list[Job], on_success: Callable[[Outcome], None] | None) -> list[Outcome]:
        task = ray.remote(run_attempt)
        where = f"Ray cluster at {self.address}" if self.address else \
            f"local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
        self.out(f"running {len(jobs)} job(s) on {where}")
        outcomes: dict[str, Outcome] = {}
        pending: list[tuple[Job, int, float]] = [(job, 1, 0.0) for job in jobs]  # job, attempt, seconds so far
        running: dict[Any, tuple[Job, int, float]] = {}
        cwd = os.getcwd()
        # A local Ray never grows: a job asking for more CPUs (GPUs) than it has would wait forever, so it gets
        # what there is (a CUDA job on a machine without a GPU then fails with the agent's own error).
        have = None if self.address else ray.cluster_resources()
        try:
            while pending or running:
                while pending and (self.parallel is None or len(running) < self.parallel):
                    job, attempt, spent = pending.pop(0)
                    cpus, gpus = (job.cpus, job.gpus) if have is None else \
                        (min(job.cpus, have.get("CPU", 1.0)), min(job.gpus, have.get("GPU", 0.0)))
                    ref = task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                                       name=f"tubedreamer:{job.name}").remote(job, cwd)
                    running[ref] = (job, attempt, spent)
                    self.out(f"queued {job.name}" + (f" (attempt {attempt})" if attempt > 1 else ""))
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                if self._stop is not None:
                    raise KeyboardInterrupt if self._stop == signal.SIGINT else SystemExit(143)
                for ref in done:
                    job, attempt, spent = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the worker or its node died, or Ray failed it
                        lines = [line for line in str(error).splitlines() if line.strip()][-6:]
                        result = {"returncode": None, "wall_s": 0.0,
                                  "error": f"{type(error).__name__}: " + " | ".join(lines)}
                    spent += result.get("wall_s", 0.0)
                    if self._finish(job, attempt, result, spent, outcomes, on_success):
                        pending.append((job, attempt + 1, spent))
        finally:
            if running:  # interrupted: stop the jobs (checkpoints stay); a worker that does not stop is killed
                for ref in running:
                    ray.cancel(ref)
                with contextlib.suppress(Exception):
                    done, left = ray.wait(list(running), num_returns=len(running), timeout=15)
                    for ref in left:
                        ray.cancel(ref, force=True)
        return [outcomes[job.rundir] for job in jobs]


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
