"""Triton-side helpers shared by the fusion and BLS models (copied beside their model.py).

Loads ``ops.py`` by path (no installed package can shadow it), reads JSON parameters,
converts tensors (numpy on CPU; torch through DLPack when a tensor lives on a GPU, so the
math stays on the device) and calls other models through BLS.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).parent


def load_ops():
    spec = importlib.util.spec_from_file_location("tritonfleet_ops", HERE / "ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_params(args, key):
    """JSON parameters from config ``parameters[key]``, plus ``params.json`` if present."""
    config = json.loads(args["model_config"])
    params = json.loads(config["parameters"][key]["string_value"])
    extra = HERE / "params.json"
    if extra.is_file():
        params.update(json.loads(extra.read_text()))
    dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
    return config, params, dtypes


def input_array(request, name):
    """numpy for CPU tensors; a torch tensor (zero-copy, DLPack) for GPU tensors."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input '{name}'")
    if tensor.is_cpu():
        return tensor.as_numpy()
    from torch.utils import dlpack

    return dlpack.from_dlpack(tensor.to_dlpack())


def output_tensor(name, value, dtype):
    if isinstance(value, np.ndarray):
        return pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=dtype))
    import torch
    from torch.utils import dlpack

    torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(value.to(torch_dtype).contiguous()))


class StageError(RuntimeError):
    """A model called through BLS answered with an error."""


def _stage_request(stage, arrays):
    inputs = [pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in zip(stage["inputs"], arrays)]
    return pb_utils.InferenceRequest(model_name=stage["model"], model_version=int(stage.get("version", -1)),
                                     requested_output_names=[stage["output"]], inputs=inputs)


def _stage_output(stage, response, batch):
    if response.has_error():
        raise StageError(f"{stage['model']}: {response.error().message()}")
    tensor = pb_utils.get_output_tensor_by_name(response, stage["output"])
    if tensor is None:
        raise StageError(f"{stage['model']} returned no '{stage['output']}'")
    if tensor.is_cpu():
        out = tensor.as_numpy()
    else:
        from torch.utils import dlpack

        out = dlpack.from_dlpack(tensor.to_dlpack()).cpu().numpy()
    if out.ndim == 0 or len(out) != batch:
        raise StageError(f"{stage['model']} returned {list(out.shape)} for a batch of {batch}")
    return out


def call_stage(stage, arrays):
    """Run ``stage`` (model, version, inputs, output) on ``arrays``; returns numpy output."""
    return _stage_output(stage, _stage_request(stage, arrays).exec(), len(arrays[0]))


async def call_stage_async(stage, arrays):
    return _stage_output(stage, await _stage_request(stage, arrays).async_exec(), len(arrays[0]))
