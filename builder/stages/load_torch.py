"""Load a member's PyTorch model (a state_dict with its architecture, TorchScript or an
ExportedProgram) on the CPU in eval mode, with one clear error for each way it can fail."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.spec import ModelSource
from tritonfleet.builder.stages.base import Loader


class LoadTorchModel(Loader[Any]):
    """Load a member's PyTorch model on the CPU in eval mode.

    Returns an ``nn.Module`` (state_dict or TorchScript source) or a
    ``torch.export.ExportedProgram``.
    """

    def __init__(self, source: ModelSource, where: str = "model"):
        self.source = source
        self.where = where  # spec path used in error messages, e.g. "members[0] (cnn_a).model"

    def call_impl(self) -> Any:
        import torch

        src = self.source
        if src.kind == "torchscript":
            try:
                return torch.jit.load(str(src.torchscript), map_location="cpu").eval()
            except Exception as exc:  # torch raises RuntimeError/ValueError variants
                raise ConversionError(
                    f"{self.where}.torchscript: {src.torchscript} is not a TorchScript file "
                    f"({_first_line(exc)}); save one with torch.jit.save"
                ) from None
        if src.kind == "exported_program":
            try:
                return torch.export.load(str(src.exported_program))
            except Exception as exc:
                raise ConversionError(
                    f"{self.where}.exported_program: {src.exported_program} is not an "
                    f"ExportedProgram file ({_first_line(exc)}); save one with torch.export.save"
                ) from None
        module = self._instantiate()
        state = self._load_state_dict()
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConversionError(
                f"{self.where}.checkpoint: {src.checkpoint} does not fit architecture "
                f"'{src.architecture}' with kwargs {src.kwargs}:\n{_indent(str(exc))}\n"
                "Check that the checkpoint was saved from this architecture and kwargs."
            ) from None
        return module.eval()

    def _instantiate(self):
        import torch

        src = self.source
        target, _, class_name = src.architecture.rpartition(":")
        try:
            if target.endswith(".py"):
                module = _import_file(Path(target))  # made absolute by the spec validator
            else:
                module = importlib.import_module(target)
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(
                f"{self.where}.architecture: cannot import '{target}' ({type(exc).__name__}: "
                f"{_first_line(exc)}); install the package that defines it or use "
                "'path/to/file.py:Class'"
            ) from None
        cls = getattr(module, class_name, None)
        if cls is None:
            raise ConversionError(
                f"{self.where}.architecture: '{target}' has no attribute '{class_name}'"
            )
        try:
            instance = cls(**src.kwargs)
        except Exception as exc:
            raise ConversionError(
                f"{self.where}.kwargs: {class_name}(**{src.kwargs}) failed: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None
        if not isinstance(instance, torch.nn.Module):
            raise ConversionError(
                f"{self.where}.architecture: {class_name} is not a torch.nn.Module"
            )
        return instance

    def _load_state_dict(self) -> dict:
        import torch

        path = self.source.checkpoint
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConversionError(
                f"{self.where}.checkpoint: cannot read {path} as a PyTorch checkpoint "
                f"({_first_line(exc)}); save it with torch.save(model.state_dict(), path)"
            ) from None
        if isinstance(state, dict):
            for key in ("state_dict", "model_state_dict", "model"):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise ConversionError(
                f"{self.where}.checkpoint: {path} holds a {type(state).__name__}, not a state_dict"
            )
        return state


def load_torch_model(source: ModelSource, where: str = "model") -> Any:
    """Eager twin of :class:`LoadTorchModel`."""
    return LoadTorchModel(source, where)()


def instantiate(architecture: str, kwargs: dict, where: str = "model") -> Any:
    """A new, untrained ``nn.Module`` of ``architecture`` (``pkg.module:Class`` or an absolute
    ``file.py:Class``, as the spec resolves it) built with ``kwargs``; the same errors as loading."""
    source = ModelSource.model_construct(architecture=architecture, kwargs=dict(kwargs))
    return LoadTorchModel(source, where)._instantiate()


def _import_file(path: Path):
    if not path.is_file():
        raise ConversionError(f"architecture file not found: {path}")
    name = "tritonfleet_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _indent(text: str, prefix: str = "    ") -> str:
    lines = text.strip().splitlines()
    if len(lines) > 12:
        lines = lines[:12] + [f"... ({len(lines) - 12} more lines)"]
    return "\n".join(prefix + ln for ln in lines)
