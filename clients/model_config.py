"""Read and write Triton ``config.pbtxt`` text through Triton's own protobuf schema.

``tritonclient.grpc.model_config_pb2.ModelConfig`` is the schema tritonserver itself parses,
so a config that goes through these functions is one the server accepts field by field.
"""

from __future__ import annotations

from tritonfleet.clients.dtypes import from_config_dtype


def parse_pbtxt(text: str):
    """Parse ``config.pbtxt`` text into a ``model_config_pb2.ModelConfig``."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def to_pbtxt(proto) -> str:
    """Text of a ``ModelConfig``; ``max_batch_size: 0`` kept (proto3 drops zeros, Triton
    wants it explicit to tell a non-batching model from an unset field)."""
    from google.protobuf import text_format

    text = text_format.MessageToString(proto)
    if proto.max_batch_size == 0:
        text += "max_batch_size: 0\n"
    return text


def tensors_of(proto, which: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, dims)}`` of a parsed config's ``input`` or ``output`` list."""
    from tritonclient.grpc import model_config_pb2

    items = proto.input if which == "input" else proto.output
    return {
        t.name: (from_config_dtype(model_config_pb2.DataType.Name(t.data_type)), tuple(t.dims))
        for t in items
    }


def ensemble_steps(proto) -> list[str]:
    """Model names an ensemble config calls, in step order (empty for other models)."""
    return [s.model_name for s in proto.ensemble_scheduling.step] if proto.platform == "ensemble" else []
