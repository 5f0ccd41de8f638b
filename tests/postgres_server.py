"""A throw-away PostgreSQL server for tests and benchmarks (the conftest fixture `postgres_url` uses it)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PG_PORT = 55432
PG_USER = "bm"


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server binaries (newest version), or None when the package is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A throw-away PostgreSQL server as the unprivileged `postgres` user, in a temporary folder, listening on a
    Unix socket only (no TCP port, no system service). `start()` returns the SQLAlchemy URL or raises
    RuntimeError saying why it cannot start."""

    def __init__(self, port: int = PG_PORT):
        self.port = port
        self.dir: Path | None = None

    def _as_postgres(self, *cmd: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {(done.stderr or done.stdout).strip()[-400:]}")

    def start(self) -> str:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("Debian's postgresql package is not installed (no /usr/lib/postgresql/*/bin)")
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise RuntimeError("running as root without runuser: cannot start PostgreSQL unprivileged")
        self.dir = Path(tempfile.mkdtemp(prefix="bmpg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        db = self.dir / "db"
        self._as_postgres(str(bindir / "initdb"), "-D", str(db), "-A", "trust", "-U", PG_USER, "--no-sync")
        self._as_postgres(str(bindir / "pg_ctl"), "-D", str(db), "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses='' -c fsync=off",
                          "-l", str(self.dir / "log"), "-w", "start")
        return self.url

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@/postgres?host={self.dir}&port={self.port}"

    def stop(self) -> None:
        if self.dir is None:
            return
        bindir = postgres_bin()
        try:
            self._as_postgres(str(bindir / "pg_ctl"), "-D", str(self.dir / "db"), "-m", "fast", "-w", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
