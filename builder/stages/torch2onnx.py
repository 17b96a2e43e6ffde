"""PyTorch -> ONNX: one self-contained file whose batch and every ``-1`` axis are dynamic.

* ``nn.Module`` and ``ExportedProgram`` sources go through the dynamo exporter
  (``torch.onnx.export(..., dynamo=True)``): the batch is ``torch.export.Dim("batch")``, every
  other ``-1`` axis a ``Dim.DYNAMIC`` hint with the spec's min/max (torch infers which axes
  must be equal, e.g. ``input_ids`` and ``attention_mask``);
* TorchScript modules, and ``nn.Module`` sources with ``export: {exporter: torchscript}``, go
  through the TorchScript exporter with ``dynamic_axes``.

Weights are embedded (no ``.onnx.data`` beside the file), inputs/outputs carry the spec's
names, dimension 0 of every input and output is the symbolic ``batch`` and each other dynamic
axis is named ``<input>_<axis>`` (outputs that follow an input axis share its name). An axis
the spec declares dynamic but the export fixed, and every export failure, is a
:class:`ConversionError` naming the model, the module and op or line that failed, and what to
try next (:mod:`tritonfleet.builder.stages.export_errors`).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.spec import TensorSpec
from tritonfleet.builder.stages.base import Loader, quiet, resolve
from tritonfleet.builder.stages.export_errors import explain_export_failure

BATCH_DIM = "batch"


class ExportOnnx(Loader[Path]):
    """Export ``model`` (a value or a loader) to ``path``; returns the path."""

    def __init__(
        self,
        model: Any,
        sample: Sequence[np.ndarray],
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        path: Path,
        opset: int = 18,
        name: str = "model",
        keep_debug_info: bool = False,
        exporter: str = "auto",
    ):
        self.model = model
        self.sample = sample
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.path = Path(path)
        self.opset = opset
        self.name = name
        self.keep_debug_info = keep_debug_info
        self.exporter = exporter

    def call_impl(self) -> Path:
        import onnx
        import torch

        model = resolve(self.model)
        if any(len(s) < 2 for s in self.sample):
            raise ConversionError(f"{self.name}: export needs a sample batch of at least 2")
        args = tuple(torch.from_numpy(np.ascontiguousarray(s)) for s in self.sample)
        input_names = [t.name for t in self.inputs]
        output_names = [t.name for t in self.outputs]

        script = isinstance(model, torch.jit.ScriptModule)
        program = isinstance(model, torch.export.ExportedProgram)
        if self.exporter == "dynamo" and script:
            raise ConversionError(f"{self.name}: a torchscript source exports with the TorchScript exporter only; "
                                  "set export.exporter to auto or torchscript")
        if self.exporter == "torchscript" and program:
            raise ConversionError(f"{self.name}: an exported_program source exports with the dynamo exporter only; "
                                  "set export.exporter to auto or dynamo")
        use_dynamo = not script and self.exporter != "torchscript"
        with tempfile.TemporaryDirectory(prefix="tritonfleet-export-") as tmp:
            raw = Path(tmp) / "model.onnx"
            try:
                with quiet("torch.onnx", "onnxscript", "torch.export", "torch.fx", "torch._dynamo"):
                    if not use_dynamo:
                        torch.onnx.export(
                            model, args, str(raw), input_names=input_names,
                            output_names=output_names, dynamic_axes=self._dynamic_axes(), dynamo=False,
                            opset_version=self.opset,
                        )
                    else:
                        torch.onnx.export(
                            model, args, str(raw), input_names=input_names,
                            output_names=output_names, dynamic_shapes=None if program else self._dynamic_shapes(),
                            dynamo=True, opset_version=self.opset, external_data=False, verbose=False,
                        )
            except OSError:  # disk full, permissions: the build reports it
                raise
            except Exception as exc:
                raise ConversionError(explain_export_failure(
                    exc, self.name, model, args, self._dynamic_shapes() if use_dynamo and not program else None,
                    exporter="dynamo" if use_dynamo else "torchscript", source="exported_program" if program
                    else "torchscript" if script else "module", opset=self.opset)) from None
            # Re-load with any external data and save one self-contained file.
            proto = onnx.load(str(raw), load_external_data=True)
        _check_and_name_batch(proto, input_names, output_names, self.name)
        name_dynamic_axes(proto, self.inputs, self.name, program)
        if not self.keep_debug_info:
            strip_debug_info(proto)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(self.path), save_as_external_data=False)
        onnx.checker.check_model(str(self.path), full_check=True)
        return self.path


    def _dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """torch.export's ``dynamic_shapes``: the batch and a hint per dynamic axis of each input."""
        import torch

        Dim = torch.export.Dim
        batch = Dim(BATCH_DIM)
        shapes = []
        for t in self.inputs:
            axes: dict[int, Any] = {0: batch}
            for axis, a in t.dynamic_axes().items():
                axes[axis] = Dim.DYNAMIC(min=a.min, max=a.max) if a.max is not None else Dim.DYNAMIC(min=a.min)
            shapes.append(axes)
        return tuple(shapes)

    def _dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The TorchScript exporter's ``dynamic_axes``: the batch and every -1 axis, by name."""
        axes = {}
        for t in (*self.inputs, *self.outputs):
            axes[t.name] = {0: BATCH_DIM, **{i + 1: f"{t.name}_{i + 1}" for i, d in enumerate(t.shape) if d == -1}}
        return axes


def export_onnx(*args, **kwargs) -> Path:
    """Eager twin of :class:`ExportOnnx`."""
    return ExportOnnx(*args, **kwargs)()


def strip_debug_info(proto) -> None:
    """Remove what describes the build rather than the model: doc strings and metadata
    (torch's per-node stack traces with the build machine's file paths, FX node dumps,
    module class names, rewriter rule names), in the graph, every subgraph and function.
    What is left depends only on the model, so the same model gives the same bytes anywhere."""
    def clear(item) -> None:
        item.doc_string = ""
        del item.metadata_props[:]

    def graph(g) -> None:
        clear(g)
        for value in (*g.input, *g.output, *g.value_info, *g.initializer):
            clear(value)
        for node in g.node:
            clear(node)
            for attr in node.attribute:
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    clear(proto)
    graph(proto.graph)
    for function in proto.functions:
        clear(function)
        for node in function.node:
            clear(node)


def _check_and_name_batch(proto, input_names: list[str], output_names: list[str], name: str) -> None:
    """Verify names and that dim 0 is dynamic everywhere; call it ``batch``."""
    graph_inputs = [i for i in proto.graph.input if i.name not in {x.name for x in proto.graph.initializer}]
    got_in = [i.name for i in graph_inputs]
    got_out = [o.name for o in proto.graph.output]
    if got_in != input_names or got_out != output_names:
        raise ConversionError(
            f"{name}: exported ONNX has inputs {got_in} and outputs {got_out}, the spec "
            f"declares {input_names} and {output_names}; make forward() take and return "
            "exactly the spec's tensors, in order"
        )
    for value in (*graph_inputs, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise ConversionError(f"{name}: tensor '{value.name}' has no batch dimension")
        if dims[0].HasField("dim_value"):
            raise ConversionError(
                f"{name}: tensor '{value.name}' has a fixed batch size {dims[0].dim_value}; "
                "export with a dynamic batch (for an ExportedProgram: "
                "torch.export.export(..., dynamic_shapes=({0: torch.export.Dim('batch')},)))"
            )
        dims[0].dim_param = BATCH_DIM


def name_dynamic_axes(proto, inputs: Sequence[TensorSpec], name: str, program: bool = False) -> None:
    """Check that every declared dynamic axis of every input is symbolic in ``proto`` and name it
    ``<input>_<axis>`` everywhere in the graph (outputs and inner values that follow it share it)."""
    graph_inputs = {i.name: i for i in proto.graph.input}
    renames: dict[str, str] = {}
    for t in inputs:
        dims = graph_inputs[t.name].type.tensor_type.shape.dim
        for axis in t.dynamic_axes():
            dim = dims[axis] if axis < len(dims) else None
            if dim is None or not dim.HasField("dim_param"):
                fixed = dim.dim_value if dim is not None else "?"
                how = (f"export the program with a dynamic axis {axis} for '{t.name}' (dynamic_shapes=... "
                       f"{{{axis}: torch.export.Dim.DYNAMIC}})" if program else
                       "look for code that turns this size into a constant (a reshape/view to a literal size, "
                       "a Python int taken from .shape and used as a tensor value, a loop over range(size)), "
                       "or try export: {exporter: torchscript}")
                raise ConversionError(
                    f"{name}: axis {axis} of input '{t.name}' is declared dynamic (-1) but the export fixed it at "
                    f"{fixed}; {how}"
                )
            renames.setdefault(dim.dim_param, f"{t.name}_{axis}")
    renames.pop(BATCH_DIM, None)
    if renames:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(renames, key=len, reverse=True))) + r")\b")
        _rename_dims(proto.graph, lambda p: pattern.sub(lambda m: renames[m.group(1)], p))


def _rename_dims(graph, rename) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = rename(dim.dim_param)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename_dims(attr.g, rename)
            for sub in attr.graphs:
                _rename_dims(sub, rename)
