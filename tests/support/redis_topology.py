"""Real Redis topologies for the production tests: a TLS server with its own CA and client
certificates (made with the ``openssl`` command), and a primary + replica watched by three
sentinels, all on loopback."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from support import free_port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, a client certificate
    signed by it, and a second CA that signed nothing here (the wrong CA)."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.dir / "other-ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"


def make_certificates(directory: Path) -> Certificates:
    """Generate the files of :class:`Certificates` into ``directory`` (EC keys: fast)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed")
    d = directory
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *curve, "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN=dispatcher test {name}", cwd=d,
        )  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl(
            "req", "-new", *curve, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=dispatcher test {name}", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d,
        )  # fmt: skip
    return Certificates(d)


def _wait_ping(client: Redis, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"{what} did not start: {err}") from None
            time.sleep(0.02)


def _start(args: list[str], ping: Redis, what: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_ping(ping, process, what)
    ping.close()
    return process


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    if process.stderr is not None:
        process.stderr.close()


class TlsRedis:
    """``redis-server --port 0 --tls-port P``: TLS only, client certificates required."""

    def __init__(self, certs: Certificates, *, client_certs: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.certs = certs
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dispatcher-tls-"))
        args = [
            binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no",
            "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "yes" if client_certs else "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        ping = Redis(
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(certs.ca),
            ssl_certfile=str(certs.client_cert),
            ssl_keyfile=str(certs.client_key),
            socket_connect_timeout=0.5,
        )
        self.process: subprocess.Popen[bytes] | None = _start(args, ping, "TLS redis-server")

    def url(self, *, ca: Path | None = None, client: bool = True, extra: str = "") -> str:
        query = f"ssl_ca_certs={ca or self.certs.ca}&ssl_cert_reqs=required"
        if client:
            query += f"&ssl_certfile={self.certs.client_cert}&ssl_keyfile={self.certs.client_key}"
        return f"rediss://127.0.0.1:{self.port}/0?{query}{extra}"

    def close(self) -> None:
        _stop(self.process)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSet:
    """A primary, a replica and three sentinels on loopback, service ``mymaster``.

    ``down_after_ms`` is Sentinel's ``down-after-milliseconds``: how long the primary must
    be silent before it counts as down.
    """

    SERVICE = "mymaster"

    def __init__(self, *, down_after_ms: int = 2000, sentinels: int = 3) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="dispatcher-sentinel-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.primary_port = free_port()
        self.replica_port = free_port()
        self._data_node(self.primary_port)
        self._data_node(self.replica_port, replica_of=self.primary_port)
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        for port in self.sentinel_ports:
            config = self.dir / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 10000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            args = [binary, str(config), "--sentinel", "--loglevel", "warning"]
            self.processes[port] = _start(args, Redis(port=port), "redis-sentinel")
        self._wait_replica_synced()

    def _data_node(self, port: int, *, replica_of: int | None = None) -> None:
        args = [
            self.binary, "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--dbfilename", f"dump-{port}.rdb",
            "--save", "", "--appendonly", "yes", "--appendfilename", f"aof-{port}.aof",
            "--appenddirname", f"aof-{port}", "--appendfsync", "everysec",
            "--loglevel", "warning",
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.processes[port] = _start(args, Redis(port=port), "redis-server")

    def _wait_replica_synced(self) -> None:
        replica = Redis(port=self.replica_port)
        deadline = time.monotonic() + 15
        while replica.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with the primary")
            time.sleep(0.05)
        replica.close()
        # Every sentinel must know the replica (and the others) before a failover can work.
        for port in self.sentinel_ports:
            sentinel = Redis(port=port, decode_responses=True)
            while True:
                master = sentinel.sentinel_master(self.SERVICE)
                replicas = sentinel.sentinel_slaves(self.SERVICE)
                if int(master.get("num-other-sentinels", 0)) >= len(self.sentinel_ports) - 1 and (
                    replicas
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the sentinels did not discover each other")
                time.sleep(0.1)
            sentinel.close()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def primary_address(self) -> tuple[str, int]:
        sentinel = Redis(port=self.sentinel_ports[0], decode_responses=True)
        host, port = sentinel.sentinel_get_master_addr_by_name(self.SERVICE)
        sentinel.close()
        return str(host), int(port)

    def kill_primary(self) -> int:
        """SIGKILL the current primary; returns its port."""
        _, port = self.primary_address()
        process = self.processes.pop(port)
        process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
        return port

    def close(self) -> None:
        for process in self.processes.values():
            _stop(process)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
