"""Export failures as one message: which model, which module and op (or line of forward) failed,
the exporter's own summary, and what to try next.

torch's exporters raise long reports (graph dumps, links, ANSI colours). The dynamo exporter
works in three steps: ``torch.export`` captures the graph (failures name a line of the user's
code), decompositions, then the translation of each aten op to ONNX (failures name the op). For
an op, the module that called it is found in the captured program's ``nn_module_stack``.
"""

from __future__ import annotations

import re
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*m")
OP = re.compile(r"(?:OpOverload\(op='|torch\.ops\.|aten::)([A-Za-z_][\w.]*)")
USER_CODE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.+)')


def explain_export_failure(exc: BaseException, name: str, model: Any, args: tuple, dynamic_shapes: Any,
                           *, exporter: str, source: str, opset: int) -> str:
    """One message for a failed ``torch.onnx.export`` of member ``name``."""
    text = ANSI.sub("", str(exc))
    summary = _summary(text) or _first_line(text) or type(exc).__name__
    op = _op(text)
    where = ""
    if op is not None:
        module = _module_of_op(model, args, dynamic_shapes, op) if exporter == "dynamo" else None
        where = f" at op {op}" + (f" in module {module}" if module else "")
    code = USER_CODE.search(text)
    if code:
        file, line, func, snippet = code.groups()
        where += f" at {file.rsplit('/', 1)[-1]}:{line} in {func}() `{snippet.strip()[:120]}`"
    step = _step(text)
    return (f"{name}: ONNX export failed ({exporter} exporter{step}){where}: {summary}\n"
            f"  try: {_hints(exporter, source, op, opset, text)}")


def _summary(text: str) -> str:
    """The innermost exception line of the dynamo exporter's "Exception summary"."""
    if "## Exception summary" not in text:
        return ""
    block = text.split("## Exception summary", 1)[1].strip().split("\n\n")[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("⬆")]
    if not lines:
        return ""
    first = re.sub(r"^<class '[\w.]*?(\w+)'>: ", r"\1: ", lines[0])
    if first.endswith(":") and len(lines) > 1:  # a heading: its first item is the point
        first += " " + lines[1].lstrip("- ")
    return first[:400]


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _step(text: str) -> str:
    match = re.search(r"This is step (\d)/3", text)
    if not match:
        return ""
    return {"1": ", step 1/3: torch.export could not capture the model",
            "2": ", step 2/3: decomposition",
            "3": ", step 3/3: translating ops to ONNX"}[match.group(1)]


def _op(text: str) -> str | None:
    if "No ONNX function found" not in text and "Error when translating node" not in text \
            and "Unsupported" not in text and "aten::" not in text:
        return None
    match = OP.search(text)
    if not match:
        return None
    op = match.group(1).removesuffix(".default")
    return op if "::" in match.group(0) or "." in op else f"aten.{op}"


def _module_of_op(model: Any, args: tuple, dynamic_shapes: Any, op: str) -> str | None:
    """``path.to.module (Class)`` that calls ``op`` in the captured program, when capture works."""
    try:
        import torch

        from tritonfleet.builder.stages.base import quiet

        with quiet("torch.export", "torch.fx", "torch._dynamo"):
            program = model if isinstance(model, torch.export.ExportedProgram) else \
                torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False)
        wanted = op.split(".")[-1].strip("_")
        for node in program.graph.nodes:
            target = str(getattr(node, "target", ""))
            if node.op == "call_function" and wanted in target:
                stack = node.meta.get("nn_module_stack") or {}
                if not stack:
                    return "the top-level forward()"
                path, cls = list(stack.values())[-1]
                cls_name = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
                path = re.sub(r"^L\['self'\]\.?", "", str(path)) or "<root>"
                return f"'{path}' ({cls_name})"
    except Exception:  # the module is a courtesy: never hide the export error behind another one
        return None
    return None


def _hints(exporter: str, source: str, op: str | None, opset: int, text: str) -> str:
    hints = []
    if op is not None:
        hints.append(f"a newer opset (opset: {min(opset + 2, 23)}) if {op} gained an ONNX translation there, "
                     f"or rewrite that call with ops ONNX has")
    if "data-dependent" in text or "GuardOnDataDependent" in text:
        hints.append("replace Python control flow on tensor values with torch.where/torch.cond")
    if "inferred a static shape" in text:
        hints.append("the model fixes that axis (a reshape/view to a literal size?): remove that code, or write the "
                     "fixed size instead of -1 in the spec's shape")
    elif "Constraints violated" in text or "specialized" in text.lower():
        hints.append("relax or correct the dynamic axis bounds in the spec (dynamic: {axis: {min, max, multiple_of}})")
    if source == "module" and exporter == "dynamo":
        hints.append("the other exporter: export: {exporter: torchscript}")
    elif source == "module":
        hints.append("the dynamo exporter: export: {exporter: dynamo}")
    if source == "module":
        hints.append("save the model yourself and give it as a 'torchscript' (torch.jit.script/trace + torch.jit.save) "
                     "or 'exported_program' (torch.export.export + torch.export.save) source")
    return "; ".join(hints)
