"""Triton Python-backend adapter for a fusion step (copied into the repository as model.py).

All math lives in ``ops.py`` beside this file. The config parameter ``fusion`` holds the
JSON parameters: ``type``, ``inputs`` (input tensor names in member order),
``outputs`` (``{"probabilities": name, "class_index": name}``) and type-specific values.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def _load_ops():
    # Load by path so that no installed package called "ops" can shadow the copy.
    spec = importlib.util.spec_from_file_location("tritonfleet_fusion_ops", Path(__file__).with_name("ops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        self.ops = _load_ops()
        config = json.loads(args["model_config"])
        self.params = json.loads(config["parameters"]["fusion"]["string_value"])
        self.inputs = self.params["inputs"]
        self.outputs = self.params["outputs"]  # fuse() key -> output tensor name
        self.dtypes = {
            key: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"]
            )
            for key, name in self.outputs.items()
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                scores = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs]
                fused = self.ops.fuse(self.params, scores)
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(fused[key], dtype=self.dtypes[key]))
                    for key, name in self.outputs.items()
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except self.ops.FusionError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"fusion: {exc}")))
        return responses
