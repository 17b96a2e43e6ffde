"""Triton Python-backend model: the first step of an ensemble whose inputs declare constraints.

It checks every request against the inputs' declared range, finite values and dynamic-axis
bounds (``input_checks.py`` beside it, config parameter ``input_checks``) and passes the inputs
on unchanged, so a bad request gets one clear error *before* the ensemble fans out to its
members: no member starts on it (a member failing while its siblings run can stall
tritonserver 2.51's ensemble scheduler). Outputs are named ``<input>_checked``.
"""

import importlib.util
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils
import tritonfleet_monitoring as monitoring

_spec = importlib.util.spec_from_file_location("tritonfleet_input_checks", Path(__file__).with_name("input_checks.py"))
input_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(input_checks)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.checks = json.loads(config["parameters"]["input_checks"]["string_value"])
        self.names = [i["name"] for i in config["input"]]
        watch = monitoring.load_config(config)  # counts refused requests: tritonfleet_request_errors_total{reason="input"}
        self.metrics = monitoring.PipelineMetrics(pb_utils, watch, ("input",), answers=False) if watch else None

    def finalize(self):
        if self.metrics is not None:
            self.metrics.close()  # hands Triton the counts added since the last flush

    def execute(self, requests):
        responses = []
        for request in requests:
            tensors = {n: pb_utils.get_input_tensor_by_name(request, n) for n in self.names}
            try:
                input_checks.check_inputs({n: t.as_numpy() for n, t in tensors.items()}, self.checks)
            except input_checks.InputError as exc:
                if self.metrics is not None:
                    self.metrics.error("input")
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            outputs = [pb_utils.Tensor(f"{n}_checked", t.as_numpy()) for n, t in tensors.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
