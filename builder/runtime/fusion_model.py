"""Triton Python-backend adapter for an ensemble's fusion step (copied as model.py).

The math lives in ``ops.py``; this file only moves tensors. Parameters: config
``parameters["fusion"]`` (JSON) plus ``params.json`` for fitted coefficients. Requests the
dynamic batcher groups are fused in one call. Inputs on a GPU stay there (DLPack -> torch).
With the config parameter ``monitor`` it counts its traffic for ``tritonfleet monitor``
(``tritonfleet_monitoring.py``), reading the pipeline inputs from its ``monitor_<input>`` inputs.
"""

import json

import triton_python_backend_utils as pb_utils
import tritonfleet_monitoring as monitoring
import tritonfleet_serving as serving


class TritonPythonModel:
    def initialize(self, args):
        serving.tensor_path()  # numpy 2 under a numpy-1 stub: use DLPack, or fail loading with the fix
        self.ops = serving.load_ops()
        config, self.params, self.dtypes = serving.read_params(args, "fusion")
        if config.get("parameters", {}).get("FORCE_CPU_ONLY_INPUT_TENSORS", {}).get("string_value") == "no":
            serving.require_torch("fusion_device: gpu")
        self.detection = self.params["type"] == "detection"
        self.outputs = self.params["outputs"]  # result key -> output tensor name
        # errors the members handed on (local runners; see tritonfleet_serving.failed_response)
        self.handed_on = json.loads(config.get("parameters", {}).get("member_errors", {}).get("string_value", "[]"))
        # traffic metrics for tritonfleet monitor (classification; parameter "monitor"): see tritonfleet_monitoring.py
        watch = None if self.detection else monitoring.load_config(config)
        self.metrics = monitoring.PipelineMetrics(pb_utils, watch, ("fusion", "member")) if watch else None
        self.watched = watch["inputs"] if watch else {}  # pipeline input -> the fusion input carrying it

    def finalize(self):
        if self.metrics is not None:
            self.metrics.close()  # hands Triton the counts added since the last flush

    def execute(self, requests):
        failed = [serving.member_error(r, self.handed_on) for r in requests] if self.handed_on else []
        if any(failed):
            self._count("member", sum(1 for e in failed if e))
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(e)) if e else self._respond(r)
                    for r, e in zip(requests, failed)]
        if self.detection or len(requests) == 1:
            return [self._respond(r) for r in requests]
        try:  # one fusion call for the whole dynamic batch, split afterwards
            inputs = [[serving.input_array(r, n) for n in self.params["inputs"]] for r in requests]
            sizes = [len(i[0]) for i in inputs]
            joined = [_concat([i[k] for i in inputs]) for k in range(len(self.params["inputs"]))]
            fused = self.ops.fuse(self.params, joined)
        except Exception:  # isolate the failing request(s)
            return [self._respond(r) for r in requests]
        self._answered(requests, fused, joined, sizes)
        responses, start = [], 0
        for size in sizes:
            part = {key: value[start:start + size] for key, value in fused.items()}
            responses.append(self._response(part))
            start += size
        return responses

    def _respond(self, request):
        try:
            if self.detection:
                groups = {role: [serving.input_array(request, n) for n in names]
                          for role, names in self.params["inputs"].items()}
                fused = self.ops.fuse_detections(self.params, groups["boxes"], groups["scores"], groups["labels"],
                                                 groups["count"])
            else:
                scores = [serving.input_array(request, n) for n in self.params["inputs"]]
                fused = self.ops.fuse(self.params, scores)
                self._answered([request], fused, scores)
            return self._response(fused)
        except (self.ops.FusionError, ValueError) as exc:
            self._count("fusion", 1)
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"fusion: {exc}"))

    def _answered(self, requests, fused, scores, sizes=None):
        if self.metrics is not None:  # inputs, arg-maxes and ids are taken inside the metrics' guard
            self.metrics.answered(
                fused["probabilities"],
                lambda: {n: _concat([serving.input_array(r, t) for r in requests]) for n, t in self.watched.items()},
                lambda: monitoring.member_argmax(scores), requests=len(requests),
                ids=lambda: [r.request_id() for r in requests], sizes=sizes)

    def _count(self, reason, n):
        if self.metrics is not None:
            self.metrics.error(reason, n)

    def _response(self, fused):
        return pb_utils.InferenceResponse(output_tensors=[
            serving.output_tensor(name, fused[key], self.dtypes[name]) for key, name in self.outputs.items()
        ])


def _concat(arrays):
    import numpy as np

    if all(isinstance(a, np.ndarray) for a in arrays):
        return np.concatenate(arrays)
    import torch

    return torch.cat(list(arrays))
