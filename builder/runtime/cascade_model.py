"""Cascade / early exit (BLS), copied as model.py.

Stage 0 answers every sample; samples whose top probability is below ``thresholds[0]``
go to stage 1, and so on; the last stage answers whatever is left. Only the escalated
samples are sent on, as one batch. A request may override the thresholds with the request
parameter ``thresholds`` (JSON list) or ``threshold`` (one value for every stage), to trace
the accuracy/latency trade-off without a rebuild. Output ``stage`` says who answered.
With the config parameter ``monitor`` it counts its traffic for ``tritonfleet monitor``
(``tritonfleet_monitoring.py``; stages disagree when two that ran on a sample differ).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
import tritonfleet_monitoring as monitoring
import tritonfleet_serving as serving


class TritonPythonModel:
    def initialize(self, args):
        serving.tensor_path()  # numpy 2 under a numpy-1 stub: use DLPack, or fail loading with the fix
        self.ops = serving.load_ops()
        config, self.params, self.dtypes = serving.read_params(args, "pipeline")
        self.stages = self.params["stages"]
        self.out = self.params["outputs"]
        watch = monitoring.load_config(config)  # traffic metrics for tritonfleet monitor (tritonfleet_monitoring.py)
        self.metrics = monitoring.PipelineMetrics(pb_utils, watch, ("stage", "fusion", "request")) if watch else None

    def finalize(self):
        if self.metrics is not None:
            self.metrics.close()  # hands Triton the counts added since the last flush

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._run(request))
            except (serving.StageError, ValueError, self.ops.FusionError) as exc:
                if self.metrics is not None:
                    self.metrics.error("stage" if isinstance(exc, serving.StageError) else
                                       "fusion" if isinstance(exc, self.ops.FusionError) else "request")
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"cascade: {exc}")))
        return responses

    def _thresholds(self, request):
        thresholds = list(self.params["thresholds"])
        extra = json.loads(request.parameters() or "{}")
        if "thresholds" in extra:
            thresholds = [float(t) for t in json.loads(extra["thresholds"])] if isinstance(
                extra["thresholds"], str) else [float(t) for t in extra["thresholds"]]
        elif "threshold" in extra:
            thresholds = [float(extra["threshold"])] * len(thresholds)
        if len(thresholds) != len(self.stages) - 1 or any(not 0 <= t <= 1 for t in thresholds):
            raise ValueError(f"need {len(self.stages) - 1} thresholds in [0, 1], got {thresholds}")
        return thresholds

    def _run(self, request):
        x = [serving.input_array(request, n) for n in self.params["inputs"]]
        thresholds = self._thresholds(request)
        n = len(x[0])
        probs, stage_of = None, np.full((n, 1), -1, np.int64)
        answers = np.full((len(self.stages), n), -1, np.int64)  # each stage's arg-max where it ran
        pending = np.arange(n)
        for s, stage in enumerate(self.stages):
            scores = serving.call_stage(stage, [a[pending] for a in x])
            p = self.ops.to_probabilities(scores, stage["activation"])
            answers[s, pending] = np.asarray(p).argmax(axis=1)
            if probs is None:
                probs = np.zeros((n, p.shape[1]), np.float32)
            done = np.ones(len(pending), bool) if s == len(self.stages) - 1 else \
                ~self.ops.escalate_mask(p, thresholds[s])
            probs[pending[done]] = p[done]
            stage_of[pending[done], 0] = s
            pending = pending[~done]
            if len(pending) == 0:
                break
        if self.metrics is not None:
            self.metrics.answered(probs, dict(zip(self.params["inputs"], x)), answers, ids=lambda: [request.request_id()])
        return pb_utils.InferenceResponse(output_tensors=[
            serving.output_tensor(self.out["probabilities"], probs, self.dtypes[self.out["probabilities"]]),
            serving.output_tensor(self.out["class_index"], self.ops.class_index(probs),
                                  self.dtypes[self.out["class_index"]]),
            serving.output_tensor(self.params["stage_output"], stage_of, self.dtypes[self.params["stage_output"]]),
        ])
