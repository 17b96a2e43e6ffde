"""Keep a local tritonserver's models alive and current (explicit model control).

Two things the bundled tritonserver 2.51 does not do by itself:

* **Restart dead Python-backend stubs.** If a stub process dies (OOM kill, segfault in a
  native library), Triton marks the instance "not healthy" and fails every request to it
  until the model is reloaded. The supervisor counts each model's stub processes (children
  of the server whose first argument is the model's ``model.py``) and reloads a model that
  lost one. Clients that retry with backoff (``TritonClient(retries=...)``) ride it out.
* **Pick up builds at their commit point.** Triton's poll mode can load a repository in the
  middle of a copy. tritonfleet commits a build by replacing ``manifest.json`` last, so the
  supervisor watches that file and reloads exactly the models whose files changed (members
  before the ensembles that use them), and unloads removed ones.
* **Restart a server that stopped answering** (with a ``canary``: a model and its inputs). A
  live process with live stubs can still answer nothing (tritonserver 2.51 was seen doing so
  after member errors inside an ensemble, docs/RELIABILITY.md). Every ``canary_interval``
  seconds the supervisor sends the canary request with a ``canary_timeout``; after
  ``canary_failures`` failures in a row it **restarts the server** (``restart``: the process
  group is killed and the server started again on the same ports, every model loaded anew).
  Reloading models is not enough: a request Triton holds keeps the old model version alive.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonfleet.clients.manifest import MANIFEST
from tritonfleet.clients.model_config import ensemble_steps, parse_pbtxt


class Supervisor:
    def __init__(self, repository: Path, server_pid: Callable[[], int | None], client_factory: Callable,
                 interval: float = 1.0, log: Callable[[str], None] = lambda message: None,
                 canary: tuple[str, Any] | None = None, restart: Callable[[], None] | None = None,
                 canary_interval: float = 5.0, canary_timeout: float = 10.0, canary_failures: int = 2):
        self.repository = Path(repository).resolve()
        self.server_pid = server_pid
        self.client_factory = client_factory
        self.interval = interval
        self.log = log
        self.canary = canary  # (model, inputs) a healthy server answers
        self.restart = restart
        self.canary_interval, self.canary_timeout, self.canary_failures = canary_interval, canary_timeout, canary_failures
        self.restarts: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.server_restarts: list[str] = []  # why each restart of the server happened
        self.errors: list[str] = []
        self._failed_canaries = 0
        self._next_canary = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._expected: Counter[str] = Counter()
        self._manifest = self._read_manifest()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._expected = Counter({m: self.expected_stubs(m) for m in self.stubs()})
        self._thread = threading.Thread(target=self._run, name="tritonfleet-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    # ------------------------------------------------------------------ observation
    def stubs(self) -> Counter[str]:
        """model name -> live (not zombie) Python-backend stub processes of this server."""
        return Counter(model for _, model in self.stub_processes())

    def stub_processes(self) -> list[tuple[int, str]]:
        """(pid, model) of each live Python-backend stub this server started."""
        pid = self.server_pid()
        found: list[tuple[int, str]] = []
        if pid is None:
            return found
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if ppid != str(pid) or state in ("Z", "X"):  # a killed stub lingers as a zombie
                    continue
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if len(args) > 1 and args[0].endswith(b"triton_python_backend_stub"):
                model_py = Path(args[1].decode(errors="replace"))
                if model_py.parent.parent.parent == self.repository:
                    found.append((int(proc.name), model_py.parent.parent.name))
        return found

    def ensembles_using(self, model: str) -> list[str]:
        users = []
        for config in sorted(self.repository.glob("*/config.pbtxt")):
            try:
                proto = parse_pbtxt(config.read_text())
            except Exception:
                continue
            if model in ensemble_steps(proto):
                users.append(proto.name)
        return users

    def _read_manifest(self) -> dict:
        try:
            return json.loads((self.repository / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._check_canary():
                    continue
                self._heal()
                self._sync()
            except Exception as exc:  # keep supervising; report through errors/log
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.log(f"supervisor: {exc}")

    def _check_canary(self) -> bool:
        """Send the canary when it is due; restart the server after too many failures in a row.
        True when the server was restarted (the rest of this round is skipped)."""
        if self.canary is None or self.restart is None or time.monotonic() < self._next_canary:
            return False
        self._next_canary = time.monotonic() + self.canary_interval
        model, inputs = self.canary
        outcome: list[str] = []

        def ask() -> None:  # in a thread of its own: a server that stopped answering may never reply
            try:
                with self.client_factory(timeout=self.canary_timeout) as client:
                    client.infer(model, inputs)
                outcome.append("")
            except Exception as exc:  # ServerError, a timeout: the server did not answer it
                outcome.append(f"{type(exc).__name__}: {str(exc)[:200]}")

        asking = threading.Thread(target=ask, name="tritonfleet-canary", daemon=True)
        asking.start()
        asking.join(self.canary_timeout + 1.0)
        reason = outcome[0] if outcome else f"no answer within {self.canary_timeout:.0f} s"
        if not reason:
            self._failed_canaries = 0
            return False
        self._failed_canaries += 1
        if self._failed_canaries < self.canary_failures:
            return False
        self.log(f"supervisor: the canary request to '{model}' failed {self._failed_canaries} times in a row "
                 f"({reason}); restarting the server")
        self.restart()
        self.server_restarts.append(reason)  # once the server answers again
        self._failed_canaries = 0
        self._expected = Counter({m: self.expected_stubs(m) for m in self.stubs()})
        self._manifest = self._read_manifest()
        self._next_canary = time.monotonic() + self.canary_interval
        return True

    def _heal(self) -> None:
        live = self.stubs()
        lost = [m for m, n in self._expected.items() if live.get(m, 0) < n]
        for model in lost:
            self.log(f"supervisor: a stub of '{model}' died; restarting the model")
            self.restarts[model] += 1  # counted when started: clients may be served before _load returns
            with self.client_factory() as client:  # Triton ignores a load of unchanged files: unload first
                client.unload_model(model)
            # unloading a member takes the ensembles that use it down with it: load them again
            self._load([model, *self.ensembles_using(model)])

    def _sync(self) -> None:
        new = self._read_manifest()
        old = self._manifest
        if not new or new == old:
            return
        old_models, new_models = old.get("models", {}), new.get("models", {})
        changed = [m for m, rec in new_models.items()
                   if old_models.get(m, {}).get("files") != rec.get("files")]
        removed = [m for m in old_models if m not in new_models]
        # members and fusion steps first, then the ensembles/pipelines that call them
        changed.sort(key=lambda m: new_models[m].get("kind") in ("ensemble", "pipeline"))
        if changed:
            self.log(f"supervisor: manifest changed; reloading {', '.join(changed)}")
            self.reloads.update(changed)
            self._load(changed)
        with self.client_factory() as client:
            for model in removed:
                client.unload_model(model)
        self._manifest = new

    def _load(self, models: list[str]) -> None:
        with self.client_factory() as client:
            for model in models:
                client.load_model(model)
        for model in models:
            self._expected[model] = self.expected_stubs(model)

    def expected_stubs(self, model: str) -> int:
        """Stub processes a Python-backend model runs: its instance_group counts (0 otherwise).
        Taken from the config, not counted: during a reload old and new stubs overlap."""
        try:
            proto = parse_pbtxt((self.repository / model / "config.pbtxt").read_text())
        except Exception:
            return 0
        if proto.backend != "python":
            return 0
        return sum(group.count or 1 for group in proto.instance_group) or 1
