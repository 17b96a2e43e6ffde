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
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tritonfleet.clients.manifest import MANIFEST
from tritonfleet.clients.model_config import ensemble_steps, parse_pbtxt


class Supervisor:
    def __init__(self, repository: Path, server_pid: Callable[[], int | None], client_factory: Callable,
                 interval: float = 1.0, log: Callable[[str], None] = lambda message: None):
        self.repository = Path(repository).resolve()
        self.server_pid = server_pid
        self.client_factory = client_factory
        self.interval = interval
        self.log = log
        self.restarts: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.errors: list[str] = []
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
                self._heal()
                self._sync()
            except Exception as exc:  # keep supervising; report through errors/log
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.log(f"supervisor: {exc}")

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
