"""fp32 ONNX -> fp16 ONNX with fp32 inputs and outputs kept (onnxconverter-common).

Weights and activations become float16; Cast nodes at the graph boundary keep the model's
signature, so the Triton config and the ensemble do not change. On TensorRT (>= 10,
strongly typed networks) this fp16-typed graph is what selects fp16 kernels.

Graphs with control flow (``Loop``/``If``/``Scan`` subgraphs, e.g. what the exporter emits for
``nn.EmbeddingBag``) break the converter's type inference inside the subgraphs. Then the
conversion is retried with those nodes, their subgraphs, the sequence ops around them and
every outer value the subgraphs read kept in fp32 (the rest of the graph fp16); what was kept
is reported (:attr:`ConvertToFp16.kept_fp32`). If that fails too, one
:class:`ConversionError` names the op and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.stages.base import Loader, quiet, resolve

CONTROL_FLOW = ("Loop", "If", "Scan")
SEQUENCE_OPS = ("SequenceEmpty", "SequenceInsert", "SequenceAt", "SequenceConstruct", "SequenceErase",
                "SequenceLength", "ConcatFromSequence", "SplitToSequence")
PINNED = "__fp32"
HINT = ("keep this member in fp32 (members[i].precisions: [fp32, int8]) or let the variant fail without failing "
        "the build (precision.optional: [fp16])")


class ConvertToFp16(Loader[Path]):
    def __init__(self, onnx_path: Any, path: Path, name: str = "model", keep_prefix: str | None = None):
        self.onnx_path = onnx_path
        self.path = Path(path)
        self.name = name
        self.keep_prefix = keep_prefix  # nodes named with it keep their types (a compiled graph's float64 fusion)
        self.kept_fp32: list[str] = []  # op types kept in fp32 (graphs with control flow)

    def call_impl(self) -> Path:
        import onnx

        try:
            from onnxconverter_common import float16
        except ImportError:
            raise ConversionError(
                f"{self.name}: fp16 variants need onnxconverter-common, which is not installed; "
                "fix: pip install onnxconverter-common (a tritonfleet dependency), or drop fp16 from precision.variants"
            ) from None

        source = resolve(self.onnx_path)
        original = onnx.load(str(source))
        try:
            with quiet("onnxconverter_common"):
                kept = [n.name for n in original.graph.node if self.keep_prefix and n.name.startswith(self.keep_prefix)]
                model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True,
                                                         node_block_list=kept or None)
            _loads(model)
        except OSError:  # disk full, permissions: the build reports it
            raise
        except OnnxRuntimeCrash as exc:
            raise ConversionError(f"{self.name}: fp16 conversion failed: {exc}; {HINT}") from None
        except Exception as exc:
            flow = [n for n in original.graph.node if n.op_type in CONTROL_FLOW]
            if not flow:
                raise ConversionError(f"{self.name}: fp16 conversion failed: {_one_line(exc)}; {HINT}") from None
            ops = sorted({n.op_type for n in flow})
            try:
                with quiet("onnxconverter_common"):
                    model = convert_keeping_control_flow(original, float16)
                _loads(model)
            except Exception as retry:
                raise ConversionError(
                    f"{self.name}: fp16 conversion failed at {'/'.join(ops)} (node {flow[0].name}; control-flow "
                    f"subgraphs, e.g. from nn.EmbeddingBag), also with them kept in fp32: {_one_line(retry)}; {HINT}"
                ) from None
            self.kept_fp32 = ops
        self.path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(model, str(self.path), save_as_external_data=False)
        onnx.checker.check_model(str(self.path))
        return self.path


def convert_to_fp16(onnx_path: Any, path: Path, name: str = "model") -> Path:
    """Eager twin of :class:`ConvertToFp16`."""
    return ConvertToFp16(onnx_path, path, name)()


LOAD_CHECK = ("import sys, onnxruntime as ort\n"
              "o = ort.SessionOptions(); o.log_severity_level = 3\n"
              "ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n")


class OnnxRuntimeCrash(RuntimeError):
    """onnxruntime died (a signal) loading a converted model: never retried, never in-process."""


def _loads(model) -> None:
    """onnxruntime's type inference (subgraphs included) accepts the model. Checked in a child
    process: onnxruntime 1.2x segfaults loading some fp16 graphs (seen: a ViT's attention blocks),
    which must fail this variant, not kill the build."""
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tritonfleet-fp16-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model.SerializeToString())
        proc = subprocess.run([sys.executable, "-c", LOAD_CHECK, str(path)], capture_output=True, text=True,
                              timeout=600)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise OnnxRuntimeCrash(f"onnxruntime crashed ({name}) loading the fp16 model")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"onnxruntime could not load the fp16 model (exit {proc.returncode})")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def _subgraphs(node):
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _outer_refs(graph) -> set[str]:
    """Names a (sub)graph reads from its enclosing scopes."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        defined |= set(node.output)
        used |= {x for x in node.input if x}
        for sub in _subgraphs(node):
            used |= _outer_refs(sub)
    return used - defined


def _rename_inputs(graph, mapping: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for sub in _subgraphs(node):
            _rename_inputs(sub, mapping)


def convert_keeping_control_flow(model, float16):
    """fp16 everywhere except control-flow nodes, their subgraphs, sequence ops and the float
    values the subgraphs read from outside (pinned by an fp32 Cast the converter leaves alone)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    types = {i.name: i.data_type for i in graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input)})
    nodes, blocked = [], []
    for node in graph.node:
        if node.op_type in CONTROL_FLOW:
            refs = set().union(*[_outer_refs(sub) for sub in _subgraphs(node)])
            mapping = {}
            for ref in sorted(r for r in refs if types.get(r) == TensorProto.FLOAT):
                cast = helper.make_node("Cast", [ref], [ref + PINNED], to=TensorProto.FLOAT,
                                        name=f"tritonfleet_keep_fp32_{len(blocked)}")
                nodes.append(cast)
                blocked.append(cast.name)
                mapping[ref] = ref + PINNED
            for sub in _subgraphs(node):
                _rename_inputs(sub, mapping)
            blocked.append(node.name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    block_ops = [*float16.DEFAULT_OP_BLOCK_LIST, *SEQUENCE_OPS]
    out = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked, op_block_list=block_ops)
    _repair(out, set(blocked), set(block_ops))
    return out


def _repair(model, blocked: set[str], block_ops: set[str]) -> None:
    """Fix what the converter leaves inconsistent around blocked nodes: pinned values stay fp32,
    and a float output of a blocked node read by an fp16 node gets a Cast to fp16."""
    from onnx import TensorProto, helper

    graph = model.graph
    for node in graph.node:
        if node.output and node.output[0].endswith(PINNED):
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = TensorProto.FLOAT
    keep = [v for v in graph.value_info if not v.name.endswith(PINNED)]
    del graph.value_info[:]
    graph.value_info.extend(keep)

    def is_blocked(node) -> bool:
        return node.name in blocked or node.op_type in block_ops or "_input_cast" in node.name \
            or "_output_cast" in node.name

    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    nodes = []
    casts: dict[str, str] = {}
    for node in graph.node:
        if not is_blocked(node) and node.op_type != "Cast":
            for i, name in enumerate(node.input):
                producer = producers.get(name)
                if producer is None or not (producer.name in blocked or producer.op_type in SEQUENCE_OPS):
                    continue
                if producer.op_type in CONTROL_FLOW or name in outputs:
                    continue
                if name not in casts:
                    casts[name] = name + "__fp16"
                    nodes.append(helper.make_node("Cast", [name], [casts[name]], to=TensorProto.FLOAT16,
                                                  name=f"tritonfleet_to_fp16_{len(casts)}"))
                node.input[i] = casts[name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(_topological(nodes, graph))


def _topological(nodes: list, graph) -> list:
    """Nodes in an order where every input (subgraphs' outer reads included) is made before use;
    the converter appends the Cast nodes it adds at the end."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    needs = [({x for x in n.input} | set().union(*[_outer_refs(g) for g in _subgraphs(n)])) for n in nodes]
    made = {o for n in nodes for o in n.output}
    ordered, pending = [], list(range(len(nodes)))
    while pending:
        ready = [i for i in pending if all(x in available or x not in made for x in needs[i])]
        if not ready:  # a cycle cannot happen in a valid graph; keep the rest as it was
            ordered += pending
            break
        for i in ready:
            ordered.append(i)
            available |= set(nodes[i].output)
        pending = [i for i in pending if i not in set(ready)]
    return [nodes[i] for i in ordered]
