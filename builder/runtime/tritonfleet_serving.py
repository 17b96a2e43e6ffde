"""Triton-side helpers shared by the Python-backend models (copied beside their model.py).

Loads ``ops.py`` by path (no installed package can shadow it), reads JSON parameters,
converts tensors (numpy on CPU; torch through DLPack when a tensor lives on a GPU, so the
math stays on the device) and calls other models through BLS.

numpy 2: ``pb_utils.Tensor`` <-> numpy goes through the stub's pybind11, which reads numpy's
array descriptor struct itself. A stub built against numpy 1 (tritonserver 2.51, the one in
nvidia-pytriton 0.7) reads the item size from where numpy 1 kept it; numpy 2 moved it, so
under numpy 2 an output made from an array reports 0 bytes (the client gets an empty tensor,
an ensemble "input byte size mismatch ... got 0") and an input's array gets zero strides.
DLPack carries shape and dtype itself: under numpy 2, :func:`tensor_path` probes the numpy
path once per process and, when it is broken, :func:`to_numpy` / :func:`from_numpy` cross
through DLPack (by way of torch) instead; when neither works, model loading fails with the fix.
"""

import functools
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


def require_torch(why):
    """Fail loading (with the fix) when this server's Python has no torch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"{why} computes with torch inside the server's Python, which has no torch; install torch there "
            "(an image built FROM the Triton container plus 'pip install torch') or build with "
            "serving.fusion_device: cpu"
        ) from None


def read_params(args, key):
    """JSON parameters from config ``parameters[key]``, plus ``params.json`` if present."""
    config = json.loads(args["model_config"])
    params = json.loads(config["parameters"][key]["string_value"])
    extra = HERE / "params.json"
    if extra.is_file():
        params.update(json.loads(extra.read_text()))
    dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
    return config, params, dtypes


NUMPY_FIX = ("this tritonserver's Python-backend stub misreads numpy {version} arrays (it was built for numpy < 2), "
             "and the DLPack way around it needs torch, which the server's Python lacks; run the server's Python "
             "with numpy < 2 (pip install 'numpy<2' in the interpreter that starts tritonserver) or install torch there")


@functools.lru_cache(maxsize=None)  # noqa: UP033 - the stub's Python may be 3.8
def tensor_path():
    """``"numpy"`` when ``pb_utils.Tensor`` <-> numpy works in this stub, ``"dlpack"`` when only
    DLPack does (numpy 2 under a stub built for numpy 1). Raises with the fix when neither does.

    The probe builds a tensor the way Triton builds a request's input (shape, dtype and a
    pointer) and reads it back as numpy. DLPack goes through torch: this stub renames the
    capsules it consumes to "used_dlpack" where the DLPack protocol says "used_dltensor", which
    numpy's capsule destructor takes for an unconsumed capsule (it reports an error for every
    tensor); torch's destructor only asks whether the capsule is still "dltensor".
    """
    if int(np.__version__.split(".")[0]) < 2:
        return "numpy"
    try:
        import torch
        from torch.utils import dlpack
    except ImportError:
        raise RuntimeError(NUMPY_FIX.format(version=np.__version__)) from None
    expected = np.arange(6, dtype=np.float32).reshape(2, 3)
    probe = pb_utils.Tensor.from_dlpack("probe", dlpack.to_dlpack(torch.from_numpy(expected.copy())))
    try:
        if np.array_equal(probe.as_numpy(), expected):
            return "numpy"
    except Exception:
        pass
    if not np.array_equal(dlpack.from_dlpack(probe.to_dlpack()).numpy(), expected):
        raise RuntimeError(NUMPY_FIX.format(version=np.__version__))
    pb_utils.Logger.log_info(f"tritonfleet: numpy {np.__version__} under a stub built for numpy < 2: "
                             "tensors cross through DLPack")
    return "dlpack"


def to_numpy(tensor):
    """A CPU ``pb_utils.Tensor`` as a numpy array (zero-copy either way)."""
    if tensor_path() == "numpy":
        return tensor.as_numpy()
    from torch.utils import dlpack

    return dlpack.from_dlpack(tensor.to_dlpack()).numpy()


def from_numpy(name, array, dtype=None):
    """A ``pb_utils.Tensor`` holding ``array`` (as ``dtype``), whatever numpy the stub has."""
    array = np.ascontiguousarray(array, dtype=dtype)
    if tensor_path() == "numpy":
        return pb_utils.Tensor(name, array)
    import torch
    from torch.utils import dlpack

    if not array.flags.writeable:  # torch.from_numpy shares memory and wants it writable
        array = array.copy()
    return pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(torch.from_numpy(array)))


def input_array(request, name):
    """numpy for CPU tensors; a torch tensor (zero-copy, DLPack) for GPU tensors."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input '{name}'")
    if tensor.is_cpu():
        return to_numpy(tensor)
    from torch.utils import dlpack

    return dlpack.from_dlpack(tensor.to_dlpack())


def output_tensor(name, value, dtype):
    if isinstance(value, np.ndarray):
        return from_numpy(name, value, dtype)
    import torch
    from torch.utils import dlpack

    torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(value.to(torch_dtype).contiguous()))


# Member errors inside an ensemble. tritonserver 2.51's ensemble scheduler loses track of a
# request when one step fails while a sibling step still runs: the client gets the error, but
# the request stays counted as in flight for good (shutdown then waits its whole exit timeout,
# and with large inputs the server can stop answering altogether). So a local runner asked for
# MEMBER_ERROR and not for RAISE_MARKER -- only an ensemble step asks that way; a direct caller
# asks for one output by name or for all of them -- answers with zero-filled outputs and the
# error text in MEMBER_ERROR, and the ensemble's final step, which runs when every member has
# answered, raises it (docs/RELIABILITY.md).
MEMBER_ERROR = "tritonfleet_error"
RAISE_MARKER = "tritonfleet_raise"


def failed_response(request, message, outputs):
    """The response of a runner that failed on ``request``: an error, or inside a tritonfleet
    ensemble ``message`` handed on to the final step. ``outputs``: (name, numpy dtype, dims)."""
    wanted = set(request.requested_output_names())
    if MEMBER_ERROR not in wanted or RAISE_MARKER in wanted or tensor_path() != "numpy":
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
    batch = request.inputs()[0].shape()[0]
    tensors = [from_numpy(name, np.zeros((batch, *[1 if d < 0 else d for d in dims]), dtype))
               for name, dtype, dims in outputs if name in wanted]
    text = np.array([[message.encode("utf-8", "replace")]] * batch, dtype=np.object_)
    return pb_utils.InferenceResponse(output_tensors=[*tensors, pb_utils.Tensor(MEMBER_ERROR, text)])


def member_error(request, handed_on):
    """The first error a member handed on for ``request`` (``handed_on``: [input, member] pairs),
    as one message naming the member, or None."""
    for name, member in handed_on:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            text = tensor.as_numpy().reshape(-1)
            if text.size and text[0]:
                value = text[0]
                return f"member '{member}': {value.decode('utf-8', 'replace') if isinstance(value, bytes) else value}"
    return None


class StageError(RuntimeError):
    """A model called through BLS answered with an error."""


def _stage_request(stage, arrays):
    inputs = [from_numpy(n, a) for n, a in zip(stage["inputs"], arrays)]
    return pb_utils.InferenceRequest(model_name=stage["model"], model_version=int(stage.get("version", -1)),
                                     requested_output_names=[stage["output"]], inputs=inputs)


def _stage_output(stage, response, batch):
    if response.has_error():
        raise StageError(f"{stage['model']}: {response.error().message()}")
    tensor = pb_utils.get_output_tensor_by_name(response, stage["output"])
    if tensor is None:
        raise StageError(f"{stage['model']} returned no '{stage['output']}'")
    if tensor.is_cpu():
        out = to_numpy(tensor)
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
