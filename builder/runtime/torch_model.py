"""Triton Python-backend model that runs a TorchScript file with PyTorch (copied as model.py).

The ``local`` target's torch member. It runs on CUDA when the config asks for the GPU and
torch sees one, on the CPU otherwise. Tensors cross the backend boundary through DLPack in
both directions: an input that arrives in GPU memory (CUDA shared memory, a GPU model
upstream) is used where it lies, an output on the GPU is handed back without a host copy,
and numpy is never involved (so numpy 2 in the stub's Python is fine). Config parameters:

* ``torchscript_file``: file name beside this one (default ``model.pt``);
* ``device``: ``cpu`` or ``gpu``;
* ``threads``: torch intra-op threads on the CPU (``0``: torch decides);
* ``channels_last``: ``true`` runs 4-D inputs and the weights in channels-last memory format.

On CUDA, cuDNN picks its fastest kernels per input shape (``cudnn.benchmark``), so the first
batch of each size is slower.

Requests the dynamic batcher hands over together run as one call.
"""

import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils
import tritonfleet_serving as serving
from torch.utils import dlpack

DTYPES = {"TYPE_FP32": torch.float32, "TYPE_FP16": torch.float16, "TYPE_FP64": torch.float64,
          "TYPE_BF16": torch.bfloat16, "TYPE_INT64": torch.int64, "TYPE_INT32": torch.int32,
          "TYPE_INT16": torch.int16, "TYPE_INT8": torch.int8, "TYPE_UINT8": torch.uint8, "TYPE_BOOL": torch.bool}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.device = torch.device("cpu")
        if params.get("device") == "gpu" and torch.cuda.is_available():
            on_gpu = args.get("model_instance_kind") == "GPU"
            self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0)) if on_gpu else 0)
            torch.backends.cudnn.benchmark = True  # fastest kernels per input shape (tried on its first batch)
        threads = int(params.get("threads", "0"))
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        path = Path(__file__).with_name(params.get("torchscript_file", "model.pt"))
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.channels_last = params.get("channels_last") == "true"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.input_names = [i["name"] for i in config["input"]]
        declared = [o for o in config["output"] if o["name"] not in (serving.MEMBER_ERROR, serving.RAISE_MARKER)]
        self.outputs = [(o["name"], DTYPES[o["data_type"]]) for o in declared]
        self.failed_outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"]), [int(d) for d in o["dims"]])
                               for o in declared]  # zeros beside an error handed on to the ensemble's final step

    def execute(self, requests):
        try:
            batches = [[self._input(r, n) for n in self.input_names] for r in requests]
            sizes = [len(b[0]) for b in batches]
            joined = batches[0] if len(batches) == 1 else [torch.cat([b[k] for b in batches])
                                                          for k in range(len(self.input_names))]
            with torch.inference_mode():
                result = self.model(*joined)
            result = result if isinstance(result, (tuple, list)) else (result,)
            if len(result) != len(self.outputs):
                raise ValueError(f"the model returned {len(result)} outputs, the config declares {len(self.outputs)}")
        except Exception as exc:  # one bad request must not fail the others
            if len(requests) == 1:  # an error, or inside an ensemble handed on to its final step
                return [serving.failed_response(requests[0], f"torch: {exc}", self.failed_outputs)]
            return [r for req in requests for r in self.execute([req])]

        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(out[start:start + size].to(dtype).contiguous()))
                       for (name, dtype), out in zip(self.outputs, result)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def _input(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise ValueError(f"missing input '{name}'")
        x = dlpack.from_dlpack(tensor.to_dlpack()).to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
