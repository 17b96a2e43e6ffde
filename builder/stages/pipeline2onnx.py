"""Members' ONNX + fusion -> ONE ONNX graph: a compiled pipeline (``serving.compile: true``).

Every member's fp32 graph is prefixed with its name (``cnn_a/...``: nodes, values, initializers,
functions; onnx.compose's ``add_prefix``) and put in one graph:

* members fed by the pipeline read the pipeline inputs directly (one graph input per pipeline
  input, shared; the i-th input of each such member is the i-th pipeline input, as in the
  ensemble);
* chained members read their producers' outputs inside the graph (``inputs_from``);
* the fusion math follows as ONNX ops (:mod:`.fusion2onnx`), or for chaining (``fusion: none``)
  the chosen member's outputs are the graph's outputs;
* nodes whose outputs nothing reads are dropped (e.g. outputs of a member no one fuses).

Dynamic axes stay dynamic: the graph inputs keep the members' symbolic dimensions (``batch``,
``<input>_<axis>``), and the members' internal symbolic dimensions are prefixed so that two
members never share one by accident. Weights stay embedded (one self-contained file) and no
build-host metadata is added. Patterns that call models conditionally or loop over images
(cascade, route, detection fusion) have no one-graph form: :func:`compile_refusal` says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.spec import PipelineSpec
from tritonfleet.builder.stages.base import Loader
from tritonfleet.builder.stages.fusion2onnx import FUSION_PREFIX, fusion_nodes

PROTOBUF_LIMIT = 2 << 30  # one self-contained ONNX file must stay below protobuf's 2 GB

REFUSALS = {
    "cascade": "cascade cannot be compiled into one graph (it calls stages conditionally)",
    "route": "route cannot be compiled into one graph (it picks a model per request, with shadow copies and "
             "fallback)",
    "detection": "detection fusion cannot be compiled into one graph (weighted boxes fusion clusters each "
                 "image's boxes in a data-dependent loop)",
}


def compile_refusal(spec: PipelineSpec) -> str | None:
    """One line saying why ``spec``'s pipeline cannot be one graph, or None when it can."""
    kind = spec.fusion.type if spec.fusion_kind == "bls" else spec.fusion_kind
    reason = REFUSALS.get(kind)
    return f"{spec.name}: {reason}; serving the Triton pipeline only" if reason else None


@dataclass(frozen=True)
class MemberGraph:
    """One member in the merged graph: its name (the prefix), its ONNX and what feeds its inputs
    (member input -> a pipeline input, or ``<producer>/<output>`` for a chained input)."""

    name: str
    path: Path
    feeds: Mapping[str, str] = field(default_factory=dict)


def layout(spec: PipelineSpec, paths: Mapping[str, Path]) -> list[MemberGraph]:
    """The members of ``spec`` that the compiled graph needs (``paths``: member -> fp32 ONNX), in
    spec order, each with what feeds it."""
    pipeline_inputs = [t.name for t in spec.inputs]
    out = []
    for m in spec.members:
        if m.name not in paths:
            continue
        sources = spec.sources_of(m)
        feeds = {t.name: f"{sources[t.name][0]}/{sources[t.name][1]}" if t.name in sources else pipeline_inputs[i]
                 for i, t in enumerate(m.inputs)}
        out.append(MemberGraph(m.name, Path(paths[m.name]), feeds))
    return out


def merge_members(members: Sequence[MemberGraph], pipeline_inputs: Sequence[str], name: str) -> Any:
    """One ModelProto holding every member's prefixed graph, fed as ``members`` say, with the
    pipeline inputs as its inputs and no outputs yet (the caller adds them)."""
    import onnx
    from onnx import compose, helper

    nodes, initializers, sparse, value_info, functions = [], [], [], [], []
    opsets: dict[str, int] = {}
    ir_version = 0
    inputs: dict[str, Any] = {}
    for member in members:
        model = onnx.load(str(member.path))
        ir_version = max(ir_version, model.ir_version)
        for imp in model.opset_import:
            if opsets.setdefault(imp.domain, imp.version) != imp.version:
                raise ConversionError(
                    f"{name}: member '{member.name}' uses opset {imp.version} of domain '{imp.domain or 'ai.onnx'}', "
                    f"an earlier member {opsets[imp.domain]}; one graph needs one opset (export every member with "
                    "the spec's opset)")
        prefix = f"{member.name}/"
        prefixed = compose.add_prefix(model, prefix)
        g = prefixed.graph
        interface = _interface_dims(g)
        renames = {}
        for value in g.input:
            own = value.name[len(prefix):]
            source = member.feeds.get(own)
            if source is None:
                raise ConversionError(f"{name}: member '{member.name}' has an input '{own}' the pipeline does not feed")
            if source in pipeline_inputs and source not in inputs:
                pipeline_input = onnx.ValueInfoProto()
                pipeline_input.CopyFrom(value)
                pipeline_input.name = source
                inputs[source] = pipeline_input
            renames[value.name] = source  # a pipeline input, or '<producer>/<output>' as prefixed there
        _rename_reads(g, renames)
        for value in g.value_info:
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param not in interface:
                    dim.dim_param = prefix + dim.dim_param
        nodes += g.node
        initializers += g.initializer
        sparse += g.sparse_initializer
        value_info += [*g.value_info, *g.output]  # member outputs stay typed for what reads them
        functions += prefixed.functions
    missing = [n for n in pipeline_inputs if n not in inputs]
    if missing:
        raise ConversionError(f"{name}: no member reads the pipeline input(s) {missing}")
    graph = helper.make_graph(nodes, name, [inputs[n] for n in pipeline_inputs], [], initializers,
                              value_info=value_info, sparse_initializer=sparse)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name="tritonfleet", functions=functions)
    model.ir_version = ir_version or onnx.IR_VERSION
    return model


def _interface_dims(graph) -> set[str]:
    """Symbolic dimensions of a member's inputs and outputs (``batch``, ``<input>_<axis>``):
    shared by every member, so they keep their names."""
    return {d.dim_param for v in (*graph.input, *graph.output) for d in v.type.tensor_type.shape.dim
            if d.HasField("dim_param")}


def _subgraphs(node):
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _rename_reads(graph, renames: Mapping[str, str]) -> None:
    """Every read of a renamed value, subgraphs included (they may read outer values)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for sub in _subgraphs(node):
            _rename_reads(sub, renames)


def _outer_reads(graph) -> set[str]:
    used = {x for n in graph.node for x in n.input if x}
    for node in graph.node:
        for sub in _subgraphs(node):
            used |= _outer_reads(sub)
    return used


def prune(model) -> None:
    """Drop nodes none of whose outputs reach a graph output, and initializers nothing reads."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= {x for x in node.input if x}
            for sub in _subgraphs(node):
                needed |= _outer_reads(sub)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    made = {o for n in keep for o in n.output}
    info = [v for v in graph.value_info if v.name in made]
    del graph.value_info[:]
    graph.value_info.extend(info)


class CompilePipeline(Loader[Path]):
    """The compiled pipeline of ``spec`` as one ONNX file at ``path``.

    ``paths``: member -> its fp32 ONNX (at least the members the pipeline's output needs);
    ``params``: the fusion step's parameters (``plan.fusion_params``, fitted values included) for
    classification fusions, None for chaining (``fusion: none``)."""

    def __init__(self, spec: PipelineSpec, paths: Mapping[str, Path], params: Mapping[str, Any] | None, path: Path,
                 name: str | None = None):
        self.spec, self.paths, self.params = spec, dict(paths), params
        self.path = Path(path)
        self.name = name or f"{spec.name}_compiled"

    def call_impl(self) -> Path:
        import onnx
        from onnx import TensorProto, helper

        spec = self.spec
        refusal = compile_refusal(spec)
        if refusal:
            raise ConversionError(refusal)
        model = merge_members(layout(spec, self.paths), [t.name for t in spec.inputs], self.name)
        graph = model.graph
        if spec.fusion_kind == "classification":
            if self.params is None:
                raise ConversionError(f"{self.name}: a {spec.fusion.type} fusion needs its parameters")
            f, classes = spec.fusion, spec.num_classes
            scores = [f"{m.name}/{spec.fused_output(m).name}" for m in spec.fused_members]
            opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
            nodes, inits = fusion_nodes(self.params, scores, classes, f.outputs.probabilities, f.outputs.class_index,
                                        opset=opset, prefix=FUSION_PREFIX)
            graph.node.extend(nodes)
            graph.initializer.extend(inits)
            batch = graph.input[0].type.tensor_type.shape.dim[0]
            dim0 = batch.dim_param or "batch"
            graph.output.extend([
                helper.make_tensor_value_info(f.outputs.probabilities, TensorProto.FLOAT, [dim0, classes]),
                helper.make_tensor_value_info(f.outputs.class_index, TensorProto.INT64, [dim0, 1])])
        else:
            chosen = spec.model(spec.fusion.member) if spec.fusion.member else spec.members[-1]
            typed = {v.name: v for v in graph.value_info}
            for t in chosen.outputs:
                inner = f"{chosen.name}/{t.name}"
                graph.node.append(helper.make_node("Identity", [inner], [t.name], name=f"output/{t.name}"))
                out = onnx.ValueInfoProto()
                out.CopyFrom(typed[inner])
                out.name = t.name
                graph.output.append(out)
        prune(model)
        if model.ByteSize() >= PROTOBUF_LIMIT:
            raise ConversionError(f"{self.name}: the compiled graph holds {model.ByteSize() >> 20} MB of weights, "
                                  "more than one ONNX file can (2 GB); serve the Triton ensemble instead")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            text = " ".join(str(exc).split())[:300]
            raise ConversionError(f"{self.name}: the merged graph is not valid ONNX: {text}") from None
        onnx.save_model(model, str(self.path), save_as_external_data=False)
        return self.path


def compile_pipeline(*args, **kwargs) -> Path:
    """Eager twin of :class:`CompilePipeline`."""
    return CompilePipeline(*args, **kwargs)()
