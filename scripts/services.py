"""The local stack: Kafka and Cassandra from Maven Central jars on OpenJDK 17, Redis and
PostgreSQL from Debian's packages. Run through ``scripts/services up|down|status [names]``.

Everything lives under ``var/``: jars, data, logs and the pid files that ``down`` uses to stop
exactly what ``up`` started.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
JAVA = Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
KAFKA_CLUSTER_ID = "pui-local-kraft-1A"  # fixed: a re-format keeps the existing data valid
JVM_TIMEOUT = float(os.environ.get("PUI_SERVICES_TIMEOUT", "180"))


def log(msg: str) -> None:
    print(f"[services] {msg}", flush=True)


@dataclass
class Service:
    name: str
    port: int
    timeout: float

    @property
    def dir(self) -> Path:
        return VAR / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    # -- process bookkeeping -------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and self.owns(pid) else None

    def owns(self, pid: int) -> bool:
        """The pid is still our process (pids are reused): it runs inside our directory.
        (The command line is no proof: redis-server rewrites its own.)"""
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return False
        return cwd == self.dir or self.dir in cwd.parents

    def spawn(self, argv: list[str], user: str | None = None, env: dict | None = None) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.dir,
            user=user,
            env=env,
        )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    # -- per service ---------------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def stop_grace(self) -> float:
        return 30.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), 0.5).close()
        return True
    except OSError:
        return False


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def jars(server: str) -> str:
    lib = VAR / "lib" / server
    if not any(lib.glob("*.jar")):
        subprocess.run([str(ROOT / "scripts" / "fetch-jars")], check=True)
    return f"{lib}/*"


class Kafka(Service):
    def start(self) -> None:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = self.dir / "server.properties"
        template = (ROOT / "services/kafka/server.properties").read_text()
        props.write_text(template.replace("@DATA@", str(data)))
        logging = [
            f"-Dlog4j2.configurationFile={ROOT}/services/kafka/log4j2.properties",
            f"-Dkafka.logs.dir={self.dir}",
        ]
        cp = jars("kafka")
        if not (data / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    str(JAVA),
                    "-Xmx256m",
                    *logging,
                    "-cp",
                    cp,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    KAFKA_CLUSTER_ID,
                    "-c",
                    str(props),
                    "--ignore-formatted",
                ],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise RuntimeError(f"Kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")
        self.spawn(
            [
                str(JAVA),
                "-Xms512m",
                "-Xmx512m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
                f"-Djava.io.tmpdir={self.dir}",
                *logging,
                "-cp",
                cp,
                "kafka.Kafka",
                str(props),
            ]
        )

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}"}).list_topics(timeout=5)
            return True
        except Exception:
            return False


def cassandra_yaml(
    port: int, storage_port: int, ssl_storage_port: int, cluster_name: str, authenticator: str
) -> str:
    """The local node's cassandra.yaml on the given ports: a node of its own cluster, which
    must not gossip with another local node."""
    return (
        (ROOT / "services/cassandra/cassandra.yaml")
        .read_text()
        .replace("@AUTHENTICATOR@", authenticator)
        .replace("native_transport_port: 9042", f"native_transport_port: {port}")
        .replace("ssl_storage_port: 7001", f"ssl_storage_port: {ssl_storage_port}")
        .replace("storage_port: 7000", f"storage_port: {storage_port}")
        .replace('"127.0.0.1:7000"', f'"127.0.0.1:{storage_port}"')
        .replace("cluster_name: 'program-user-info local'", f"cluster_name: '{cluster_name}'")
    )


def cassandra_argv(yaml: Path, data: Path, home: Path, heap: str) -> list[str]:
    """The command of a node configured by ``yaml``, keeping its data in ``data`` and its logs
    and temporary files in ``home`` (the jars must be in var/lib/cassandra)."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    jamm = next((VAR / "lib/cassandra").glob("jamm-*.jar"))
    return [
        str(JAVA),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        f"@{ROOT}/services/cassandra/jvm17.args",
        f"-javaagent:{jamm}",
        f"-Dcassandra.config=file://{yaml}",
        f"-Dcassandra.storagedir={data}",
        f"-Dcassandra.logdir={home}",
        f"-Dlogback.configurationFile={ROOT}/services/cassandra/logback.xml",
        "-Dcassandra-foreground=yes",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.superuser_setup_delay_ms=0",
        "-Dcassandra.unsafesystem=true",
        f"-Djava.io.tmpdir={home}/tmp",
        f"-Djna.tmpdir={home}/tmp",
        "-cp",
        f"{VAR / 'lib' / 'cassandra'}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


class Cassandra(Service):
    storage_port = 7000
    cluster_name = "program-user-info local"

    @property
    def auth(self) -> bool:
        return os.environ.get("PUI_CASSANDRA_AUTH", "") in ("1", "true", "yes")

    @property
    def data(self) -> Path:
        # Auth and no-auth nodes keep separate data (the system_auth tables differ).
        return self.dir / ("data-auth" if self.auth else "data")

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        yaml = self.dir / "cassandra.yaml"
        authenticator = "PasswordAuthenticator" if self.auth else "AllowAllAuthenticator"
        ports = (self.port, self.storage_port, self.storage_port + 1)
        yaml.write_text(cassandra_yaml(*ports, self.cluster_name, authenticator))
        jars("cassandra")
        heap = os.environ.get("PUI_CASSANDRA_HEAP", "1g")
        self.spawn(cassandra_argv(yaml, self.data, self.dir, heap))

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import Cluster

        auth = PlainTextAuthProvider("cassandra", "cassandra") if self.auth else None
        cluster = Cluster(
            ["127.0.0.1"], port=self.port, auth_provider=auth, connect_timeout=5, protocol_version=5
        )
        try:
            cluster.connect().execute("SELECT release_version FROM system.local", timeout=10)
            return True
        except Exception:
            return False
        finally:
            cluster.shutdown()

    def stop_grace(self) -> float:
        return 60.0


class CassandraAuth(Cassandra):
    """A second node with PasswordAuthenticator (user cassandra/cassandra) on its own ports and
    data, for the credential tests; it runs beside the main node, so nothing restarts."""

    storage_port = 7010
    cluster_name = "program-user-info auth"

    @property
    def auth(self) -> bool:
        return True

    @property
    def data(self) -> Path:
        return self.dir / "data"


class Redis(Service):
    def start(self) -> None:
        self.spawn(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--databases",
                "32",
                "--logfile",
                "",
            ]
        )

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class Postgres(Service):
    user = "postgres"

    def _os_user(self) -> str | None:
        """PostgreSQL refuses to run as root: use the postgres account when we are root."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", self.user], check=True)
        return self.user

    def start(self) -> None:
        user = self._os_user()
        data = self.dir / "data"
        run = self.dir / "run"
        self.dir.mkdir(parents=True, exist_ok=True)
        run.mkdir(exist_ok=True)
        if user:
            shutil.chown(self.dir, user)
            shutil.chown(run, user)
        if not (data / "PG_VERSION").exists():
            init = subprocess.run(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                capture_output=True,
                text=True,
                user=user,
            )
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
        if user:
            shutil.chown(self.log_file if self.log_file.exists() else self.dir, user)
        self.spawn(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(run),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            user=user,
        )

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                connect_timeout=3,
                autocommit=True,
            ) as conn:
                conn.execute("SELECT 1")
                if (
                    conn.execute("SELECT 1 FROM pg_database WHERE datname = 'pui'").fetchone()
                    is None
                ):
                    conn.execute("CREATE DATABASE pui")
            return True
        except Exception:
            return False


# --- optional emulators of the clouds' object stores, for the exhaust's storage tests -------
TOOLS = VAR / "tools"
REPORTS_CONTAINER = "reports"  # what a Sunbird deployment's reports container is called
# Azurite's documented development account: public, accepted by the emulator only.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
# The local SeaweedFS's only identity (written into its s3.json): a test credential.
SEAWEED_ACCESS_KEY = "pui-local-access"
SEAWEED_SECRET_KEY = "pui-local-secret-not-for-production"


def _http(method: str, port: int, path: str, headers: dict[str, str]) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class Azurite(Service):
    """Microsoft's Azure Storage emulator (blob service only), from the npm registry, pinned by
    services/azurite/package-lock.json and installed by `scripts/install emulators`."""

    @property
    def bin(self) -> Path:
        return TOOLS / "azurite/node_modules/.bin/azurite-blob"

    def start(self) -> None:
        if not self.bin.exists():
            raise RuntimeError("Azurite is not installed: run scripts/install emulators")
        self.spawn(
            [
                str(self.bin),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--location",
                str(self.dir / "data"),
                "--disableTelemetry",  # it would phone home otherwise
                "--skipApiVersionCheck",
                "--silent",
            ]
        )

    def ready(self) -> bool:
        """Up, and holding the reports container (created here, as a deployment has it)."""
        if not port_open(self.port):
            return False
        import base64
        import email.utils
        import hashlib
        import hmac

        date = email.utils.formatdate(usegmt=True)
        version = "2021-08-06"
        # Shared Key signature of "Create Container": 11 empty standard headers, then the
        # x-ms-* headers and the resource.
        to_sign = (
            "PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n"
            f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{REPORTS_CONTAINER}\nrestype:container"
        )
        digest = hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256)
        headers = {
            "x-ms-date": date,
            "x-ms-version": version,
            "Content-Length": "0",
            "Authorization": f"SharedKey {AZURITE_ACCOUNT}:"
            + base64.b64encode(digest.digest()).decode(),
        }
        try:
            status = _http(
                "PUT",
                self.port,
                f"/{AZURITE_ACCOUNT}/{REPORTS_CONTAINER}?restype=container",
                headers,
            )
        except OSError:
            return False
        return status in (201, 409)  # created, or there already


class SeaweedFS(Service):
    """SeaweedFS (master, volume, filer and S3 gateway in one process), built from its Go
    module pinned by services/seaweedfs/go.mod by `scripts/install emulators`."""

    master_port = 9335
    volume_port = 8086
    filer_port = 8890

    @property
    def bin(self) -> Path:
        return TOOLS / "bin/weed"

    def start(self) -> None:
        if not self.bin.exists():
            raise RuntimeError("SeaweedFS is not installed: run scripts/install emulators")
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "pui-local",
                    "credentials": [
                        {"accessKey": SEAWEED_ACCESS_KEY, "secretKey": SEAWEED_SECRET_KEY}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.dir / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        self.spawn(
            [
                str(self.bin),
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={self.master_port}",
                f"-volume.port={self.volume_port}",
                f"-filer.port={self.filer_port}",
                # Small volumes, as many as the disk holds, and deleted test objects reclaimed
                # every minute: the tests upload and delete hundreds of MiB per run.
                "-master.volumeSizeLimitMB=128",
                "-volume.max=0",
                "-master.garbageThreshold=0.05",
                "-master.vacuumIntervalSeconds=60",
                "-s3",
                f"-s3.port={self.port}",
                f"-s3.config={config}",
                # Its Iceberg and Lance catalogs are not needed, and 9101 is a metrics port here.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ]
        )

    def ready(self) -> bool:
        """Up, and holding the reports bucket (created here with a SigV4-signed request)."""
        if not port_open(self.port):
            return False
        import datetime as dt
        import hashlib
        import hmac

        now = dt.datetime.now(dt.UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        empty = hashlib.sha256(b"").hexdigest()
        host = f"127.0.0.1:{self.port}"
        signed = "host;x-amz-content-sha256;x-amz-date"
        canonical = (
            f"PUT\n/{REPORTS_CONTAINER}\n\nhost:{host}\nx-amz-content-sha256:{empty}\n"
            f"x-amz-date:{stamp}\n\n{signed}\n{empty}"
        )
        scope = f"{day}/us-east-1/s3/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n" + hashlib.sha256(canonical.encode()).hexdigest()
        )
        key = ("AWS4" + SEAWEED_SECRET_KEY).encode()
        for part in (day, "us-east-1", "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {
            "Host": host,
            "x-amz-date": stamp,
            "x-amz-content-sha256": empty,
            "Content-Length": "0",
            "Authorization": f"AWS4-HMAC-SHA256 Credential={SEAWEED_ACCESS_KEY}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}",
        }
        try:
            status = _http("PUT", self.port, f"/{REPORTS_CONTAINER}", headers)
        except OSError:
            return False
        return status in (200, 409)  # created, or already ours


SERVICES: dict[str, Service] = {
    "kafka": Kafka("kafka", 9092, JVM_TIMEOUT),
    "cassandra": Cassandra("cassandra", 9042, JVM_TIMEOUT),
    "redis": Redis("redis", 6379, 30),
    "postgres": Postgres("postgres", 5432, 60),
    "cassandra-auth": CassandraAuth("cassandra-auth", 9043, JVM_TIMEOUT),
    "azurite": Azurite("azurite", 10000, 60),
    "seaweedfs": SeaweedFS("seaweedfs", 8333, 90),
}
# Started only when named: `scripts/services up cassandra-auth azurite seaweedfs`.
OPTIONAL = {"cassandra-auth", "azurite", "seaweedfs"}


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def up(names: list[str]) -> int:
    started: dict[str, float] = {}
    for name in names:
        svc = SERVICES[name]
        pid = svc.pid()
        if pid:
            continue
        if port_open(svc.port):
            log(f"{name}: port {svc.port} is taken by a process we did not start; stop it first")
            return 1
        try:
            svc.start()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            log(f"{name}: failed to start: {exc}")
            print(tail(svc.log_file))
            return 1
        started[name] = time.monotonic()
    failed = False
    for name in names:
        svc = SERVICES[name]
        t0 = started.get(name)
        deadline = (t0 or time.monotonic()) + svc.timeout
        while not svc.ready():
            pid = svc.pid()
            if pid is None or time.monotonic() > deadline:
                why = "exited" if pid is None else f"not ready after {svc.timeout:.0f}s"
                log(f"{name}: {why}; last lines of {svc.log_file.relative_to(ROOT)}:")
                print(tail(svc.log_file))
                if svc.name == "cassandra":
                    print(tail(svc.dir / "system.log"))
                failed = True
                break
            time.sleep(0.5)
        else:
            pid = svc.pid()
            took = f"ready in {time.monotonic() - t0:.1f}s" if t0 else "already running"
            log(
                f"{name:9s} up on 127.0.0.1:{svc.port}  pid {pid}  {took}  "
                f"rss {rss_mib(pid):.0f} MiB"
            )
    return 1 if failed else 0


def down(names: list[str]) -> int:
    rc = 0
    for name in reversed(names):
        svc = SERVICES[name]
        pid = svc.pid()
        if pid is None:
            svc.pid_file.unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + svc.stop_grace()
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            log(f"{name}: did not stop in {svc.stop_grace():.0f}s, killing")
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        svc.pid_file.unlink(missing_ok=True)
        deadline = time.monotonic() + 10
        while port_open(svc.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        if port_open(svc.port):
            log(f"{name}: stopped, but port {svc.port} is still bound")
            rc = 1
        else:
            log(f"{name}: stopped (pid {pid})")
    return rc


def status(names: list[str]) -> int:
    rc = 0
    for name in names:
        svc = SERVICES[name]
        pid = svc.pid()
        if pid and port_open(svc.port):
            log(f"{name:9s} up    127.0.0.1:{svc.port}  pid {pid}  rss {rss_mib(pid):.0f} MiB")
        elif pid:
            log(f"{name:9s} starting (pid {pid}, port {svc.port} not open yet)")
            rc = 3
        else:
            log(f"{name:9s} down")
            rc = 3
    return rc


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/services",
        description="Start, stop or show the local Kafka, Cassandra, Redis and PostgreSQL "
        "(and, when named, the Azurite and SeaweedFS object-store emulators).",
        epilog="PUI_CASSANDRA_AUTH=1 starts Cassandra with PasswordAuthenticator "
        "(user cassandra/cassandra, separate data). PUI_SERVICES_TIMEOUT sets the JVM "
        "readiness timeout (default 180 s).",
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(SERVICES)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.names) - set(SERVICES)
    if unknown:
        parser.error(f"unknown service(s): {', '.join(sorted(unknown))}")
    names = (
        [n for n in SERVICES if n in args.names]
        if args.names
        else [n for n in SERVICES if n not in OPTIONAL or SERVICES[n].pid()]
    )
    if args.command != "status" and not JAVA.exists() and {"kafka", "cassandra"} & set(names):
        log(f"OpenJDK 17 not found at {JAVA}: run scripts/install")
        return 1
    return {"up": up, "down": down, "status": status}[args.command](names)


if __name__ == "__main__":
    sys.exit(main())
