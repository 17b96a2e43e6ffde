"""Fusion math as ONNX ops: the classification fusions of ``runtime/ops.py``, node for node.

A compiled pipeline (:mod:`.pipeline2onnx`) ends in these nodes instead of a Python-backend
fusion step. Each function below mirrors one function of ``ops.py`` and computes in float64
like it (member scores are cast up, the probabilities cast back to float32 at the end), so
the compiled graph gives the Triton ensemble's outputs, and its class indices follow the same
tie rules:

* the class index is the arg-max of the float32 probabilities, ties to the lowest class
  (``ArgMax`` with ``select_last_index=0``);
* a hard vote counts each member's arg-max (lowest class on ties), weighted; tied classes go to
  the highest summed probability, then to the lowest class;
* rescoring keeps the proposer's ``top_k`` classes, equal scores taken in class order
  (``TopK`` takes the lower index first, as ``ops.py``'s stable sort does).

Everything is a pure function of the fusion parameters (the JSON the fusion step would read,
``plan.fusion_params``): :func:`fusion_nodes` returns nodes and initializers to append to a
graph whose member scores already exist; :func:`fusion_model` wraps them as a standalone
model (member scores in, the ensemble's outputs out), which the unit tests run against
``ops.fuse``. :func:`fusion_in_float32` turns the float64 math into float32 for runtimes
without float64 (TensorRT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tritonfleet.builder.runtime import ops

FUSION_PREFIX = "fusion/"  # names of every node and initializer the fusion adds
COMPILABLE_TYPES = ops.CLASSIFICATION_TYPES  # mean, geometric_mean, weighted_mean, vote, stacking, rescore


class _Nodes:
    """Collects nodes and initializers under one name prefix (names unique by a counter)."""

    def __init__(self, opset: int, dtype: int, prefix: str = FUSION_PREFIX):
        from onnx import TensorProto

        self.opset, self.dtype, self.prefix = opset, dtype, prefix
        self.np_dtype = np.float64 if dtype == TensorProto.DOUBLE else np.float32
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        return self.ops(op_type, inputs, [output or self._name(op_type.lower())], **attrs)[0]

    def ops(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs) -> list[str]:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=self._name(op_type), **attrs))
        return list(outputs)

    def const(self, value: Any, dtype: Any | None = None, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.np_dtype), name))
        return name

    # ---- ops whose form changed between opsets
    def reduce(self, op_type: str, x: str, axis: int, keepdims: bool = True) -> str:
        """ReduceSum takes its axes as an input from opset 13, ReduceMax from opset 18."""
        since = {"ReduceSum": 13}.get(op_type, 18)
        if self.opset >= since:
            return self.op(op_type, [x, self.const([axis], np.int64, "axes")], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=[axis], keepdims=int(keepdims))

    def argmax(self, x: str, output: str | None = None) -> str:
        """Arg-max over classes, ``[batch, 1]`` int64; ties go to the lowest index."""
        return self.op("ArgMax", [x], output, axis=1, keepdims=1, select_last_index=0)

    def cast(self, x: str, to: int, output: str | None = None) -> str:
        return self.op("Cast", [x], output, to=to)

    def sum(self, xs: Sequence[str]) -> str:
        """Elementwise sum in order ((x0 + x1) + x2 ...), as numpy sums over the member axis."""
        return xs[0] if len(xs) == 1 else self.op("Sum", xs)


# --------------------------------------------------------------------------- ops.py, as nodes
def softmax(g: _Nodes, z: str) -> str:
    """``ops._softmax64`` over classes: ``exp(z - max) / sum(exp(z - max))``."""
    e = g.op("Exp", [g.op("Sub", [z, g.reduce("ReduceMax", z, 1)])])
    return g.op("Div", [e, g.reduce("ReduceSum", e, 1)])


def probabilities(g: _Nodes, scores: Sequence[str], activation: str) -> list[str]:
    """``ops._probs``: each member's scores as float64 probabilities."""
    if activation not in ("softmax", "none"):
        raise ops.FusionError(f"unknown activation '{activation}' (use 'softmax' or 'none')")
    cast = [g.cast(s, g.dtype) for s in scores]
    return [softmax(g, c) for c in cast] if activation == "softmax" else cast


def mean(g: _Nodes, p: Sequence[str]) -> str:
    return g.op("Div", [g.sum(p), g.const(float(len(p)))])


def weighted_mean(g: _Nodes, p: Sequence[str], weights: Sequence[float]) -> str:
    w = ops.check_weights(weights, len(p))
    return g.sum([g.op("Mul", [x, g.const(float(wi), hint="weight")]) for x, wi in zip(p, w)])


def geometric_mean(g: _Nodes, p: Sequence[str], eps: float = 1e-12) -> str:
    logs = [g.op("Log", [g.op("Add", [x, g.const(eps)])]) for x in p]
    mean_log = g.op("Div", [g.sum(logs), g.const(float(len(p)))])
    geo = g.op("Exp", [mean_log])
    return g.op("Div", [geo, g.reduce("ReduceSum", geo, 1)])


def one_hot(g: _Nodes, index: str, classes: int) -> str:
    """``[batch, 1]`` class indices -> ``[batch, classes]`` 0/1 in the math dtype."""
    hit = g.op("Equal", [index, g.const(np.arange(classes, dtype=np.int64), np.int64, "classes")])
    return g.cast(hit, g.dtype)


def hard_vote(g: _Nodes, p: Sequence[str], classes: int, weights: Sequence[float] | None) -> tuple[str, str]:
    """``ops.hard_vote``: (vote shares, class index ``[batch, 1]``)."""
    w = ops.check_weights([1.0] * len(p) if weights is None else weights, len(p))
    votes = g.sum([g.op("Mul", [one_hot(g, g.argmax(x), classes), g.const(float(wi), hint="weight")])
                   for x, wi in zip(p, w)])
    top = g.reduce("ReduceMax", votes, 1)
    tied = g.op("GreaterOrEqual", [votes, g.op("Sub", [top, g.const(1e-9)])])
    support = g.op("Where", [tied, g.sum(p), g.const(-1.0)])
    return votes, g.argmax(support)


def stacking(g: _Nodes, p: Sequence[str], coef: Sequence[Sequence[float]], intercept: Sequence[float],
             classes: int) -> str:
    """``ops.stacking_probabilities``: softmax(concat(p) @ coef + intercept)."""
    W, b = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
    if W.shape != (len(p) * classes, classes) or b.shape != (classes,):
        raise ops.FusionError(f"stacking coefficients have shape {list(W.shape)} / {list(b.shape)}; "
                              f"expected [{len(p) * classes}, {classes}] / [{classes}]")
    features = g.op("Concat", list(p), axis=1) if len(p) > 1 else p[0]
    logits = g.op("Add", [g.op("MatMul", [features, g.const(W, hint="coef")]), g.const(b, hint="intercept")])
    return softmax(g, logits)


def topk_mask(g: _Nodes, x: str, k: int, classes: int) -> str:
    """1 for the ``k`` highest classes of each row (equal scores: lower class first), else 0."""
    name = g._name("topk")
    _, index = g.ops("TopK", [x, g.const([k], np.int64, "k")], [f"{name}_values", f"{name}_indices"],
                     axis=1, largest=1, sorted=1)
    hit = g.op("Equal", [g.op("Unsqueeze", [index, g.const([2], np.int64, "axes")]),
                         g.const(np.arange(classes, dtype=np.int64).reshape(1, 1, classes), np.int64, "classes")])
    return g.reduce("ReduceSum", g.cast(hit, g.dtype), 1, keepdims=False)


def rescore(g: _Nodes, p: Sequence[str], classes: int, top_k: int, alpha: float) -> str:
    """``ops.rescore``: ``alpha * p0 + (1 - alpha) * p1`` on p0's top-k classes, renormalised."""
    if len(p) != 2:
        raise ops.FusionError(f"rescore fuses exactly two members, not {len(p)}")
    if not 1 <= top_k <= classes or not 0.0 <= alpha <= 1.0:
        raise ops.FusionError(f"rescore needs 1 <= top_k <= {classes} and 0 <= alpha <= 1 (got {top_k}, {alpha})")
    mixed = g.op("Add", [g.op("Mul", [p[0], g.const(alpha)]), g.op("Mul", [p[1], g.const(1.0 - alpha)])])
    combined = g.op("Mul", [mixed, topk_mask(g, p[0], top_k, classes)])
    return g.op("Div", [combined, g.reduce("ReduceSum", combined, 1)])


# --------------------------------------------------------------------------- dispatch
def fusion_nodes(params: Mapping[str, Any], scores: Sequence[str], classes: int, probabilities_name: str,
                 class_index_name: str, *, opset: int, prefix: str = FUSION_PREFIX) -> tuple[list, list]:
    """Nodes and initializers that fuse the member score tensors ``scores`` (``[batch, classes]``,
    any float type) into ``probabilities_name`` (float32 ``[batch, classes]``) and
    ``class_index_name`` (int64 ``[batch, 1]``), as ``ops.fuse(params, ...)`` does."""
    from onnx import TensorProto

    kind = params.get("type")
    if kind not in COMPILABLE_TYPES:
        raise ops.FusionError(f"fusion type '{kind}' has no ONNX form; compilable: {', '.join(COMPILABLE_TYPES)}")
    g = _Nodes(opset, TensorProto.DOUBLE, prefix)
    p = probabilities(g, scores, params.get("activation", "softmax"))
    index = None
    if kind == "vote" and params.get("mode", "hard") == "hard":
        fused, index = hard_vote(g, p, classes, params.get("weights"))
    elif kind == "mean":
        fused = mean(g, p)
    elif kind == "geometric_mean":
        fused = geometric_mean(g, p)
    elif kind in ("weighted_mean", "vote"):  # a soft vote is a weighted mean (equal weights by default)
        weights = params.get("weights")
        fused = weighted_mean(g, p, [1.0] * len(p) if weights is None else weights)
    elif kind == "stacking":
        fused = stacking(g, p, params["coef"], params["intercept"], classes)
    else:
        fused = rescore(g, p, classes, int(params["top_k"]), float(params["alpha"]))
    probs = g.cast(fused, TensorProto.FLOAT, probabilities_name)
    if index is None:
        g.argmax(probs, class_index_name)
    else:
        g.op("Identity", [index], class_index_name)
    return g.nodes, g.initializers


def fusion_model(params: Mapping[str, Any], members: int, classes: int, *, opset: int = 18,
                 score_dtype: str = "float32", outputs: tuple[str, str] = ("probabilities", "class_index")):
    """A standalone model: inputs ``scores_0..`` ``[batch, classes]``, the ensemble's two outputs."""
    from onnx import TensorProto, helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(score_dtype))
    inputs = [helper.make_tensor_value_info(f"scores_{i}", elem, ["batch", classes]) for i in range(members)]
    nodes, inits = fusion_nodes(params, [i.name for i in inputs], classes, *outputs, opset=opset)
    graph = helper.make_graph(nodes, "fusion", inputs, [
        helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["batch", classes]),
        helper.make_tensor_value_info(outputs[1], TensorProto.INT64, ["batch", 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tritonfleet")


def fusion_in_float32(model, prefix: str = FUSION_PREFIX):
    """A copy of ``model`` whose fusion nodes (``prefix``) compute in float32 instead of float64
    (TensorRT has no float64): their casts to float64 cast to float32, their float64 constants
    become float32. Every op the fusion uses is defined for both, so nothing else changes."""
    import onnx
    from onnx import TensorProto, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.name.startswith(prefix) and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.DOUBLE:
                    attr.i = TensorProto.FLOAT
    for i, init in enumerate(out.graph.initializer):
        if init.name.startswith(prefix) and init.data_type == TensorProto.DOUBLE:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
    names = {n for node in out.graph.node if node.name.startswith(prefix) for n in node.output}
    keep = [v for v in out.graph.value_info if v.name not in names]  # their inferred float64 types are stale
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    return out
