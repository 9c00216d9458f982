"""A private PostgreSQL 15 server for one lab: the shared database of a PACS cluster.

What it is for: several Orthanc instances that share one PostgreSQL index form
a real PACS cluster (a study stored through one member is found and retrieved
through any other). The lab starts its own PostgreSQL for that, in a fresh
data directory under the lab's tmpdir, listening on one lab host's address.

What it must never do: touch the system cluster (/var/lib/postgresql,
pg_ctlcluster) or systemd. The server is started with lab.spawn and stopped
by pid at the lab's teardown, even when a test fails, with a fast shutdown
(stop_postgres) before the lab's generic SIGTERM.

Every server starts from a copy of one initdb made per process (initdb is
slow on a loaded machine); the template is removed when the process exits.

PostgreSQL refuses to run as root, so initdb and the server run as the Debian
`postgres` user through setpriv, which execs without forking: the spawned pid
is the postmaster's own. Authentication is `trust`, for the lab subnet and the
server's Unix socket only; the server is throwaway (fsync off).
"""

import atexit
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.netns import IPV4_PREFIXLEN, log_tail, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
INITDB, POSTGRES, PG_ISREADY, PSQL = (str(PG_BIN / name) for name in ("initdb", "postgres", "pg_isready", "psql"))
PG_USER = "postgres"
PG_PORT = 5432
FAST_SHUTDOWN = signal.SIGINT  # SIGTERM is "smart": it would wait for every client to leave
INITDB_TIMEOUT_S = 30.0

_HBA = """\
# Written by lab/postgres.py: trust inside the lab only.
local all all trust
host  all all {subnet} trust
"""


@dataclass(frozen=True)
class Postgres:
    """A running lab PostgreSQL: where to reach it and how to stop it."""

    process: subprocess.Popen
    host: str  # its IPv4 address, on the lab host it runs in
    port: int
    database: str  # created for the caller; user PG_USER, no password
    socket_dir: str  # its Unix socket, reachable by path from any namespace
    directory: Path  # data/, postgres.log, pg_hba.conf

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"


def require_postgres_tools():
    """Fail clearly (RuntimeError) when PostgreSQL 15 or its system user is missing."""
    missing = [tool for tool in (INITDB, POSTGRES, PG_ISREADY, PSQL) if not os.access(tool, os.X_OK)]
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        missing.append(f"the system user {PG_USER!r}")
    if missing:
        raise RuntimeError("the lab's PostgreSQL needs the Debian package postgresql-15: missing "
                           + ", ".join(missing))


def _as_postgres(argv) -> list[str]:
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--", *argv]


def _psql(socket_dir, port, sql, database="postgres", timeout_s=10.0) -> subprocess.CompletedProcess:
    """One SQL command over the Unix socket (no namespace needed: it is a path)."""
    return subprocess.run([PSQL, "-h", socket_dir, "-p", str(port), "-U", PG_USER, "-d", database,
                           "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)


def _initdb(data: Path, log: Path):
    """initdb into `data` (a path the postgres user may create)."""
    completed = subprocess.run(
        _as_postgres([INITDB, "-D", str(data), "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                      "--locale=C", "--no-sync", "--wal-segsize=1"]),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=INITDB_TIMEOUT_S)
    log.write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"initdb {data} exited {completed.returncode}:\n{log_tail(log)}")


_template_dir = None  # this process's initdb result, copied for every server it starts


def _fresh_data_directory(data: Path, log: Path):
    """A new cluster in `data`: a copy of one initdb made per process.

    initdb takes 1 s on an idle machine and 4-6 s while other tests load it;
    copying its 28 MB result (1 MB WAL segments) takes ~0.3 s. The template
    is removed at exit, or at once if initdb failed.
    """
    global _template_dir
    if _template_dir is None:
        template = Path(tempfile.mkdtemp(prefix="lab-pgtemplate-"))
        atexit.register(shutil.rmtree, template, ignore_errors=True)
        os.chmod(template, 0o711)  # mkdtemp's 0700 would keep the postgres user out
        os.chown(template, pwd.getpwnam(PG_USER).pw_uid, pwd.getpwnam(PG_USER).pw_gid)
        try:
            _initdb(template / "data", log)
        except (RuntimeError, subprocess.SubprocessError):
            shutil.rmtree(template, ignore_errors=True)
            raise
        _template_dir = template
    completed = subprocess.run(["cp", "-a", str(_template_dir / "data"), str(data)],  # -a keeps the owner
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=INITDB_TIMEOUT_S)
    if completed.returncode != 0:
        raise RuntimeError(f"copying the initdb template to {data} failed: {completed.stderr.strip()}")


def start_postgres(lab, ns, database="orthanc", port=PG_PORT, start_timeout_s=15.0) -> Postgres:
    """Run a fresh cluster (see _fresh_data_directory) in host `ns`, listening on its IPv4 address.

    Returns once `database` exists. Raises RuntimeError (with the log's tail)
    if initdb fails or the server dies, AssertionError if it is not ready
    within start_timeout_s; the server is stopped in both cases.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database):
        raise ValueError(f"database name {database!r}: use a-z, 0-9 and _, starting with a letter or _")
    require_postgres_tools()
    node = lab.node(ns)
    postgres_uid = pwd.getpwnam(PG_USER).pw_uid
    postgres_gid = pwd.getpwnam(PG_USER).pw_gid
    # The lab's tmpdir is root's 0700: the postgres user must be able to pass
    # through it (not list it) to reach its own directory.
    os.chmod(lab.tmpdir, 0o711)
    directory = Path(lab.mkdtemp(f"postgres-{node.ns}"))
    os.chown(directory, postgres_uid, postgres_gid)
    data, log, hba = directory / "data", directory / "postgres.log", directory / "pg_hba.conf"
    _fresh_data_directory(data, directory / "initdb.log")
    subnet = f"{node.ipv4.rsplit('.', 1)[0]}.0/{IPV4_PREFIXLEN}"
    hba.write_text(_HBA.format(subnet=subnet))
    os.chown(hba, postgres_uid, postgres_gid)
    settings = {
        "listen_addresses": node.ipv4,
        "port": str(port),
        "unix_socket_directories": str(directory),
        "hba_file": str(hba),
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "shared_buffers": "16MB", "max_connections": "20",
    }
    argv = [POSTGRES, "-D", str(data)] + [word for key, value in settings.items()
                                          for word in ("-c", f"{key}={value}")]
    with open(log, "ab") as log_file:
        process = lab.spawn(node.ns, _as_postgres(argv), stdout=log_file, stderr=subprocess.STDOUT)
    # The lab's generic SIGTERM is a "smart" shutdown that waits for clients;
    # after its grace the postmaster would be SIGKILLed and its orphaned
    # backends left as zombies until pid 1 reaps them (seconds here).
    lab.at_close(lambda: stop_postgres(lab, process))

    def accepting():
        if process.poll() is not None:
            raise RuntimeError(f"PostgreSQL in {node.ns} exited with {process.returncode}:\n{log_tail(log)}")
        return subprocess.run([PG_ISREADY, "-q", "-h", str(directory), "-p", str(port), "-t", "1"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=5).returncode == 0

    try:
        wait_for(accepting, start_timeout_s, interval=0.05, what=f"PostgreSQL in {node.ns} to accept connections")
        created = _psql(str(directory), port, f'CREATE DATABASE "{database}" STRATEGY FILE_COPY')
        if created.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE {database} failed: {created.stderr.strip()}")
    except AssertionError as error:  # not ready in time: the log says why
        stop_postgres(lab, process)
        raise AssertionError(f"{error}\n{log_tail(log)}") from None
    except RuntimeError:  # it died (the message has the log) or CREATE DATABASE failed
        stop_postgres(lab, process)
        raise
    return Postgres(process=process, host=node.ipv4, port=port, database=database,
                    socket_dir=str(directory), directory=directory)


def stop_postgres(lab, server, timeout_s=10.0) -> int:
    """Fast shutdown (SIGINT: clients are disconnected), SIGKILL after timeout_s; return the exit code.

    `server` is a Postgres or its Popen. The lab's own teardown sends SIGTERM,
    a "smart" shutdown that waits for clients; stopping the database after
    its clients, or with this, avoids that wait.
    """
    process = server.process if isinstance(server, Postgres) else server
    lab.kill(process, FAST_SHUTDOWN)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        lab.kill(process, signal.SIGKILL)
        return process.wait(5)


def sql(server: Postgres, statement: str) -> str:
    """Run one SQL statement in the server's database; return its unaligned output."""
    completed = _psql(server.socket_dir, server.port, statement, database=server.database)
    if completed.returncode != 0:
        raise RuntimeError(f"psql: {statement!r} failed: {completed.stderr.strip()}")
    return completed.stdout
