"""Run the ``tritonserver`` bundled in nvidia-pytriton as a local subprocess.

After PyTriton's ``TritonServer``: the server gets a private backend folder (the Python
backend plus the stub built for *this* interpreter, so site-packages is never modified),
binds 127.0.0.1 on free ports unless told otherwise, writes its log to a file, and the
Python stub runs this interpreter (its ``bin`` goes first on ``PATH``; ``python=`` names
another), so models import the same numpy/onnxruntime as the caller. The stub's embedded
Python ignores ``PYTHONPATH``: to change what it imports, give it another interpreter. Use it as a context manager::

    with TritonServer("model_repository") as server:
        client = server.client("grpc")

``start`` waits for readiness and fails with the log tail if the server exits or a model
does not load; ``stop`` sends SIGINT, waits, then kills the whole process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tritonfleet.clients.errors import MissingDependencyError, ServerError

INSTALL_HINT = "install it with: pip install nvidia-pytriton (Linux x86_64/aarch64, glibc >= 2.35)"


@dataclass(frozen=True)
class TritonDistribution:
    """Paths of the tritonserver shipped inside the nvidia-pytriton wheel."""

    binary: Path
    backends: Path
    stubs: Path
    libs: Path

    @classmethod
    def locate(cls) -> TritonDistribution:
        # found, not imported: importing pytriton pulls in its client stack (zmq, typer, ...), which
        # a GPU host that got only the wheel (pip install --no-deps) does not have; only files are needed
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(f"the local Triton server needs nvidia-pytriton; {INSTALL_HINT}")
        package = Path(next(iter(spec.submodule_search_locations)))
        root = package / "tritonserver"
        # installed: the wheel's libraries sit beside the package (nvidia_pytriton.libs); a source
        # checkout keeps them in tritonserver/external_libs: take the folder that exists
        candidates = [package.parent / "nvidia_pytriton.libs", root / "external_libs"]
        libs = next((c for c in candidates if c.is_dir()), candidates[0])
        dist = cls(root / "bin" / "tritonserver", root / "backends", root / "python_backend_stubs", Path(libs))
        if not dist.binary.is_file():
            raise MissingDependencyError(f"tritonserver binary not found at {dist.binary}; {INSTALL_HINT}")
        return dist

    def stub_for(self, version: str) -> Path:
        stub = self.stubs / version / "triton_python_backend_stub"
        if not stub.is_file():
            available = sorted(p.name for p in self.stubs.iterdir()) if self.stubs.is_dir() else []
            raise MissingDependencyError(
                f"nvidia-pytriton has no Python backend stub for Python {version} "
                f"(has: {', '.join(available)}); use one of those Python versions"
            )
        return stub


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class ServerConfig:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 0      # 0: pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    repository_poll_secs: int = 2
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)
    load_models: tuple[str, ...] = ("*",)  # explicit mode: the models loaded at start (an ensemble brings its steps)

    def to_args(self) -> list[str]:
        args = [
            f"--model-repository={self.repository}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--model-control-mode={self.model_control_mode}",
            f"--log-verbose={self.log_verbose}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            # latency quantiles (p50 ... p99) per model for tritonfleet monitor: nv_inference_request_summary_us
            "--metrics-config=summary_latencies=true",
        ]
        if self.model_control_mode == "poll":
            args.append(f"--repository-poll-secs={self.repository_poll_secs}")
        if self.model_control_mode == "explicit":
            args += [f"--load-model={name}" for name in self.load_models]
        return args + list(self.extra_args)


class TritonServer:
    """A local tritonserver subprocess that owns its ports, log and backend folder."""

    def __init__(self, repository: str | Path, *, host: str = "127.0.0.1", http_port: int = 0,
                 grpc_port: int = 0, metrics_port: int = 0, log_path: str | Path | None = None,
                 model_control_mode: Literal["none", "poll", "explicit"] = "none",
                 startup_timeout: float = 180.0, extra_args: list[str] | None = None,
                 canary: tuple[str, object] | None = None,
                 cpus: set[int] | None = None, supervise: bool = False, env: dict[str, str] | None = None,
                 python: str | Path | None = None, load_models: list[str] | None = None):
        repository = Path(repository).resolve()
        if not repository.is_dir():
            raise ServerError(f"model repository not found: {repository}; build one with 'tritonfleet build SPEC'")
        self.config = ServerConfig(
            repository, host, http_port, grpc_port, metrics_port, model_control_mode,
            extra_args=list(extra_args or []), load_models=tuple(load_models or ("*",)),
        )
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.cpus = set(cpus) if cpus else None  # pin the server (and its stubs) to these CPUs
        if supervise and model_control_mode != "explicit":
            raise ServerError("supervise=True reloads models itself and needs model_control_mode='explicit'")
        self.supervise = supervise
        self.canary = canary  # (model, inputs): with supervise=True, restart the server when it stops answering
        self.env = dict(env or {})  # extra environment of the server and its stubs
        # the interpreter the Python-backend stubs run (its folder goes first on PATH; the stubs'
        # embedded Python ignores PYTHONPATH): another venv, e.g. one with numpy 2 or a CUDA torch
        self.python = Path(python) if python else Path(sys.executable)
        self.supervisor = None
        self._process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log_file = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.is_alive():
            raise ServerError(f"tritonserver already running (pid {self._process.pid})")
        dist = TritonDistribution.locate()
        cfg = self.config
        for attr in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(cfg, attr)
            if port == 0:
                setattr(cfg, attr, free_port(cfg.host))
            elif _port_taken(cfg.host, port):
                raise ServerError(
                    f"port {port} on {cfg.host} ({attr.replace('_', ' ')}) is already in use; "
                    "stop what holds it or pass another port (0 picks a free one)"
                )
        self._workdir = Path(tempfile.mkdtemp(prefix="tritonfleet-server-"))
        backends = self._prepare_backends(dist)
        if self.log_path is None:  # kept after stop() so failures can be inspected
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - open for the server's lifetime
        cmd = [str(dist.binary), *cfg.to_args(), f"--backend-directory={backends}"]
        self._process = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self._environment(dist), start_new_session=True, preexec_fn=self._preexec,
        )
        try:
            self._wait_ready()
            if self.supervise:
                from tritonfleet.clients.supervisor import Supervisor

                self.supervisor = Supervisor(self.config.repository, lambda: self.pid,
                                             lambda **kw: self.client("grpc", **kw), canary=self.canary,
                                             restart=self.restart_process)
                self.supervisor.start()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT, wait ``timeout``, then SIGKILL the process group. Returns the exit code."""
        code = None
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        if self._process is not None:
            if self._process.poll() is None:
                self._signal(signal.SIGINT)
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self._process.wait(10)
            self._signal(signal.SIGKILL)  # stubs left in the group
            code = self._process.returncode
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    def restart_process(self) -> None:
        """Kill the server's process group and start it again on the same ports (the supervisor
        keeps running; what it watches is looked up anew)."""
        if self._process is not None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
        dist = TritonDistribution.locate()
        cmd = [str(dist.binary), *self.config.to_args(), f"--backend-directory={self._workdir / 'backends'}"]
        self._process = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self._environment(dist), start_new_session=True, preexec_fn=self._preexec,
        )
        self._wait_ready()

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # ------------------------------------------------------------------ access
    def url(self, protocol: Literal["http", "grpc", "metrics"] = "grpc") -> str:
        port = {"http": self.config.http_port, "grpc": self.config.grpc_port,
                "metrics": self.config.metrics_port}[protocol]
        return f"{self.config.host}:{port}"

    def client(self, protocol: Literal["http", "grpc"] = "grpc", **kwargs):
        from tritonfleet.clients.infer import TritonClient

        return TritonClient(self.url(protocol), protocol=protocol, **kwargs)

    def failure_summary(self) -> str:
        """Model load failures from the log (Triton's error lines), else the log's tail."""
        lines = self.logs().splitlines()
        errors = [ln.split("] ", 1)[-1][:400] for ln in lines
                  if ln.startswith("E") and "failed to load" in ln]
        unavailable = [ln.strip() for ln in lines if ln.startswith("|") and "UNAVAILABLE" in ln]
        picked = errors + unavailable
        return "\n".join(picked[-20:]) if picked else "\n".join(lines[-25:])

    def logs(self, tail: int | None = None) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-tail:] if tail else lines)

    # ------------------------------------------------------------------ internals
    def _prepare_backends(self, dist: TritonDistribution) -> Path:
        backends = self._workdir / "backends"
        shutil.copytree(dist.backends, backends, ignore=shutil.ignore_patterns("__pycache__"))
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        if self.python != Path(sys.executable):
            version = subprocess.run([str(self.python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                     capture_output=True, text=True, check=True).stdout.strip()
        shutil.copy2(dist.stub_for(version), backends / "python" / "triton_python_backend_stub")
        return backends

    def _environment(self, dist: TritonDistribution) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(dist.libs), env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = os.pathsep.join(p for p in (str(self.python.parent), env.get("PATH")) if p)
        return env

    def _wait_ready(self) -> None:
        # Triton's HTTP health endpoint with the standard library: tritonclient's HTTP client needs
        # gevent, which a GPU host that got only the pure-Python tritonclient wheel does not have
        deadline = time.monotonic() + self.startup_timeout
        ready = f"http://{self.url('http')}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self._process.returncode} while starting "
                    f"(full log: {self.log_path}):\n{self.failure_summary()}"
                )
            try:
                with urllib.request.urlopen(ready, timeout=2.0) as response:
                    if response.status == 200:
                        return
            except OSError:  # refused while starting, 400 while models load, timeouts
                pass
            time.sleep(0.25)
        raise ServerError(
            f"tritonserver was not ready after {self.startup_timeout:.0f}s (full log: "
            f"{self.log_path}):\n{self.failure_summary()}"
        )

    def _preexec(self) -> None:
        _die_with_parent()
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)
