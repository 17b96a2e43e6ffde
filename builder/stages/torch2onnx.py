"""PyTorch -> ONNX: one self-contained file with a dynamic batch dimension.

* ``nn.Module`` and ``ExportedProgram`` sources go through the dynamo exporter
  (``torch.onnx.export(..., dynamo=True)``), the batch declared with ``torch.export.Dim``;
* TorchScript modules go through the TorchScript exporter with ``dynamic_axes``.

Weights are embedded (no ``.onnx.data`` beside the file), inputs/outputs carry the spec's
names, and dimension 0 of every input and output is the symbolic ``batch``. Anything else
is a :class:`ConversionError` naming the model and what to change.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.spec import TensorSpec
from tritonfleet.builder.stages.base import Loader, quiet, resolve

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
    ):
        self.model = model
        self.sample = sample
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.path = Path(path)
        self.opset = opset
        self.name = name
        self.keep_debug_info = keep_debug_info

    def call_impl(self) -> Path:
        import onnx
        import torch

        model = resolve(self.model)
        if any(len(s) < 2 for s in self.sample):
            raise ConversionError(f"{self.name}: export needs a sample batch of at least 2")
        args = tuple(torch.from_numpy(np.ascontiguousarray(s)) for s in self.sample)
        input_names = [t.name for t in self.inputs]
        output_names = [t.name for t in self.outputs]

        with tempfile.TemporaryDirectory(prefix="tritonfleet-export-") as tmp:
            raw = Path(tmp) / "model.onnx"
            try:
                with quiet("torch.onnx", "onnxscript"):
                    if isinstance(model, torch.jit.ScriptModule):
                        axes = {n: {0: BATCH_DIM} for n in (*input_names, *output_names)}
                        torch.onnx.export(
                            model, args, str(raw), input_names=input_names,
                            output_names=output_names, dynamic_axes=axes, dynamo=False,
                            opset_version=self.opset,
                        )
                    else:
                        dynamic = None
                        if not isinstance(model, torch.export.ExportedProgram):
                            batch = torch.export.Dim(BATCH_DIM)
                            dynamic = tuple({0: batch} for _ in args)
                        torch.onnx.export(
                            model, args, str(raw), input_names=input_names,
                            output_names=output_names, dynamic_shapes=dynamic, dynamo=True,
                            opset_version=self.opset, external_data=False, verbose=False,
                        )
            except OSError:  # disk full, permissions: the build reports it
                raise
            except Exception as exc:
                detail = str(exc).strip().splitlines()
                raise ConversionError(
                    f"{self.name}: ONNX export failed: {type(exc).__name__}: "
                    f"{detail[0] if detail else ''}\n"
                    "Check that forward() takes the spec's inputs in order and that the "
                    "batch dimension is not fixed (no reshape to a literal batch size)."
                ) from None
            # Re-load with any external data and save one self-contained file.
            proto = onnx.load(str(raw), load_external_data=True)
        _check_and_name_batch(proto, input_names, output_names, self.name)
        if not self.keep_debug_info:
            strip_debug_info(proto)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(self.path), save_as_external_data=False)
        onnx.checker.check_model(str(self.path), full_check=True)
        return self.path


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
