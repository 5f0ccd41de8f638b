"""The training queue: one training process at a time on this machine; later launches wait their turn.

    BMTEACH_HOME/queue/<seq>-<run>.json   one job: its run folder and `train` command; "pid" once started
    BMTEACH_HOME/queue/supervisor.lock    held (flock) by the one supervisor while it works the queue
    BMTEACH_HOME/queue/supervisor.log     the supervisor's own output (its jobs write RUN/train.log)

Why a supervisor: Streamlit kills a page's threads on refresh and the app may restart, so nothing in the app
can be what starts the next job. `submit` writes a job file and makes sure a supervisor runs
(`python -m bmteach.jobs`, its own session, so it outlives the app). The supervisor starts the oldest job's
`train` process (runs.launch_command: an argument list, never a shell; its own session; output to
RUN/train.log), waits for it, turns a stop that is not honoured within STOP_TIMEOUT_S into SIGKILL, removes the
job and takes the next; it exits when the queue is empty. If it dies, the next submit or the Training page's
refresh starts another (`ensure_supervisor`); a job whose process is gone is dropped (its run then shows as
crashed and is resumed by hand). Run state itself never comes from here but from the run folder (runs.run_state).
One queue per machine, one training at a time (a GPU run already uses every GPU with --parallel-folds); a
`train` started by hand on the command line is not in the queue, and the queue does not wait for it.
"""
from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bmteach.errors import UserError
from bmteach.storage import atomic_write_json, home, read_json

SUPERVISOR_LOCK = "supervisor.lock"
SUPERVISOR_LOG = "supervisor.log"
STOP_TIMEOUT_ENV = "BMTEACH_STOP_TIMEOUT"
STOP_TIMEOUT_S = 120.0     # a stop not honoured this long after it was asked becomes SIGKILL
POLL_S = 0.5


def queue_dir(create: bool = True) -> Path:
    path = home() / "queue"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Job:
    """One queued training: the run folder it writes and the full `python -m bmteach train ...` command."""
    id: str
    run: str
    cmd: list[str]
    submitted: float
    pid: int | None = None          # the train process, once the supervisor started it
    started: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return queue_dir() / f"{self.id}.json"

    @property
    def waiting(self) -> bool:
        return self.pid is None


def _read_job(path: Path) -> Job | None:
    try:
        raw = read_json(path)
        return Job(**{k: raw[k] for k in Job.__dataclass_fields__ if k in raw})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # half-deleted or foreign file: not a job


def jobs() -> list[Job]:
    """Every job in the queue, oldest first (started ones included). Reading creates nothing: a read-only or
    missing BMTEACH_HOME simply has no queue."""
    try:
        folder = queue_dir(create=False)
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    except (UserError, OSError):
        return []
    found = [_read_job(p) for p in paths]
    return [j for j in found if j is not None]


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def job_for(run_dir: str | Path) -> Job | None:
    """The queue's job for this run folder, if any."""
    return next((j for j in jobs() if _same(j.run, run_dir)), None)


def position(run_dir: str | Path) -> int | None:
    """1 for the next job to start, 2 after it, ...; None when the run waits in no queue."""
    waiting = [j for j in jobs() if j.waiting]
    return next((i + 1 for i, j in enumerate(waiting) if _same(j.run, run_dir)), None)


def _is_train_command(cmd: list[str]) -> bool:
    """Only bmteach's own train command is ever run from the queue (the queue is not a command runner)."""
    return len(cmd) > 4 and cmd[0] == sys.executable and cmd[1:4] == ["-m", "bmteach", "train"]


def submit(run_dir: str | Path, cmd: list[str]) -> Job:
    """Queue a training of run_dir (cmd from runs.train_command) and make sure a supervisor works the queue.
    It starts at once when nothing else trains. Refused when this run is already queued or running."""
    from bmteach import runs

    run_dir = Path(run_dir).expanduser().resolve()
    if not _is_train_command(cmd):
        raise UserError("Only `python -m bmteach train` commands can be queued.")
    stale = job_for(run_dir)
    if stale is not None and stale.pid and not runs.pid_alive(stale.pid):
        # its process is gone (killed, crashed) and the supervisor has not polled yet: the job is over
        stale.path.unlink(missing_ok=True)
    if job_for(run_dir) is not None or runs.lock_owner(run_dir) is not None:
        raise UserError(f"{run_dir.name} is already queued or training; stop it first.")
    run_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    job = Job(id=f"{time.time_ns():020d}-{run_dir.name}", run=str(run_dir), cmd=list(cmd), submitted=now)
    atomic_write_json(job.path, asdict(job))
    runs.append_log(run_dir, f"queued: {' '.join(cmd[3:])}")
    ensure_supervisor()
    return job


def cancel(run_dir: str | Path) -> bool:
    """Take a waiting job off the queue, or SIGTERM a started job's process (a train process still starting up,
    before it holds the run lock). False when the run has no job."""
    job = job_for(run_dir)
    if job is None:
        return False
    if job.waiting:
        job.path.unlink(missing_ok=True)
        from bmteach import runs

        runs.append_log(job.run, "taken off the queue")
        return True
    from bmteach.runs import pid_alive

    if job.pid and pid_alive(job.pid):
        os.kill(job.pid, signal.SIGTERM)
    return True


# --- the supervisor ----------------------------------------------------------------------------------------

def _try_flock(path: Path) -> int | None:
    """An fd holding an exclusive flock on path, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def supervisor_alive() -> bool:
    """A supervisor holds the queue's lock (the kernel drops it when that process dies: never stale)."""
    fd = _try_flock(queue_dir() / SUPERVISOR_LOCK)
    if fd is None:
        return True
    _unlock(fd)
    return False


def supervisor_pid() -> int | None:
    """The supervisor's PID as it wrote it (for tests and the page); None when none works the queue."""
    if not supervisor_alive():
        return None
    try:
        return int((queue_dir() / SUPERVISOR_LOCK).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def ensure_supervisor() -> bool:
    """Start a supervisor when jobs wait and none runs; True when one was started. Cheap: the Training page
    calls it on every refresh, so a queue whose supervisor died moves on again."""
    if not any(j.waiting for j in jobs()) or supervisor_alive():
        return False
    from bmteach.launch import start_detached

    start_detached([sys.executable, "-m", "bmteach.jobs"], queue_dir() / SUPERVISOR_LOG)
    return True


def _stop_timeout() -> float:
    try:
        return float(os.environ.get(STOP_TIMEOUT_ENV) or STOP_TIMEOUT_S)
    except ValueError:
        return STOP_TIMEOUT_S


def _next_job() -> Job | None:
    """The oldest waiting job; started jobs left by a dead supervisor are dropped (their process is gone)."""
    from bmteach.runs import pid_alive

    for job in jobs():
        if job.waiting:
            return job
        if not (job.pid and pid_alive(job.pid)):
            job.path.unlink(missing_ok=True)
    return None


def _run_job(job: Job) -> int:
    """Start the job's train process, wait for it (escalating an unheeded stop to SIGKILL), log how it ended."""
    from bmteach import runs

    if not _is_train_command(job.cmd):
        job.path.unlink(missing_ok=True)
        return -1
    proc = runs.launch_command(job.cmd, job.run)
    job.pid, job.started = proc.pid, time.time()
    atomic_write_json(job.path, asdict(job))
    killed = False
    while proc.poll() is None:
        time.sleep(POLL_S)
        asked = runs.stop_requested_at(job.run)
        if not killed and asked is not None and asked >= job.started and time.time() - asked > _stop_timeout():
            runs.append_log(job.run, f"the stop was not honoured within {_stop_timeout():.0f} s: killing it")
            runs.kill_process_group(proc.pid)
            killed = True
    code = proc.returncode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    runs.append_log(job.run, f"training process {proc.pid} ended: {how}")
    job.path.unlink(missing_ok=True)
    return code


def run_supervisor() -> int:
    """Work the queue until it is empty (`python -m bmteach.jobs`). Exits at once when another supervisor holds
    the lock. Writes nothing but job files, the lock and RUN/train.log lines."""
    lock_path = queue_dir() / SUPERVISOR_LOCK
    fd = None
    for _ in range(40):  # a page probing the lock holds it for microseconds: retry briefly
        fd = _try_flock(lock_path)
        if fd is not None:
            break
        time.sleep(0.05)
    if fd is None:
        return 0
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        while True:
            job = _next_job()
            if job is None:
                # release first, then look again: a job submitted meanwhile either is seen here or its
                # submitter finds the lock free and starts a supervisor
                _unlock(fd)
                fd = None
                if _next_job() is None:
                    return 0
                fd = _try_flock(lock_path)
                if fd is None:
                    return 0
                continue
            try:
                _run_job(job)
            except Exception as exc:  # noqa: BLE001 - never loop on a job that cannot start: say why in its log, drop it
                from bmteach import runs

                runs.append_log(job.run, f"error: the job could not run ({type(exc).__name__}: {exc})")
                job.path.unlink(missing_ok=True)
    finally:
        if fd is not None:
            _unlock(fd)


if __name__ == "__main__":
    sys.exit(run_supervisor())
