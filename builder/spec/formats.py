"""Artifact formats: ONNX (always) and TorchScript members built from the same PyTorch source.

```yaml
formats:
  variants: [onnx, torchscript]   # build both for every member and baseline
  serve: torchscript              # the format the pipeline's member steps call
  channels_last: true             # torch runner: 4-D inputs and weights in channels-last
```

A TorchScript variant is traced from the same model the ONNX is exported from, checked
against its PyTorch outputs with the same tolerances, and built in fp32 and fp16 (int8 stays
ONNX Q/DQ). On ``ngc`` Triton's PyTorch backend serves it (``platform: pytorch_libtorch``),
on ``local`` a Python-backend torch runner (CUDA when present). ONNX is always built: int8,
the accuracy measurements and fitted fusion parameters are computed on it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tritonfleet.builder.spec.common import _Strict

FormatName = Literal["onnx", "torchscript"]
TORCH_PRECISIONS = ("fp32", "fp16")
# Triton's PyTorch backend reads "<name>__<index>" as a position: such names would be reordered
PYTORCH_INDEX_SEPARATOR = "__"


class FormatSpec(_Strict):
    variants: list[FormatName] = Field(default_factory=lambda: ["onnx"], min_length=1)
    serve: FormatName = "onnx"
    channels_last: bool = False

    @model_validator(mode="after")
    def _check(self) -> FormatSpec:
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants listed twice: {self.variants}")
        if "onnx" not in self.variants:
            raise ValueError("variants must include onnx: int8, accuracy measurements and fitted fusion "
                             "parameters are computed on it (add onnx, e.g. [onnx, torchscript])")
        if self.serve not in self.variants:
            raise ValueError(f"serve is {self.serve}, which is not among the variants {self.variants}")
        return self

    @property
    def torchscript(self) -> bool:
        return "torchscript" in self.variants


def check_formats(spec: Any) -> list[str]:
    """Cross-field problems of ``spec.formats`` in a :class:`~.pipeline.PipelineSpec` (reported
    with the spec's other problems; the pipeline imports this module, not the other way round)."""
    f = spec.formats
    problems = []
    if f.serve == "torchscript":
        if spec.precision.serve not in TORCH_PRECISIONS:
            problems.append(f"formats.serve: torchscript serves fp32 or fp16, but precision.serve is "
                            f"{spec.precision.serve}; set precision.serve to fp32 or fp16")
        for m in spec.members:
            if spec.precision.serve in TORCH_PRECISIONS and spec.precision.serve not in spec.precisions_of(m):
                problems.append(f"formats.serve: torchscript needs the {spec.precision.serve} variant of "
                                f"'{m.name}', which it does not build")
    if f.torchscript:
        for m in spec.all_models:
            for t in (*m.inputs, *m.outputs):
                if PYTORCH_INDEX_SEPARATOR in t.name:
                    problems.append(f"tensor '{t.name}' of '{m.name}': TorchScript members cannot have '__' in "
                                    "tensor names (Triton's PyTorch backend reads '<name>__<index>' as a position); "
                                    "rename it")
    return problems
