"""A/B and shadow routing with fallback (BLS), copied as model.py.

Request ``i`` of this instance goes to the candidate when ``ops.routes_to_candidate(i,
candidate_fraction)`` (an exact, deterministic split), else to the current model. With
``shadow``, current-routed requests are also sent to the candidate concurrently; its answer
and errors are counted, never returned. With ``fallback``, a failing candidate is answered
by the current model. Every decision is counted in the Triton metric
``tritonfleet_route_total{pipeline, route}`` (routes: current, candidate, fallback, shadow,
shadow_error) on the server's metrics endpoint; output ``route`` says 0 current,
1 candidate, 2 fallback for each sample. With the config parameter ``monitor`` it also counts
its traffic for ``tritonfleet monitor`` (``tritonfleet_monitoring.py``; current and candidate are
compared on shadowed requests).
"""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils
import tritonfleet_monitoring as monitoring
import tritonfleet_serving as serving

ROUTES = ("current", "candidate", "fallback", "shadow", "shadow_error")


class TritonPythonModel:
    def initialize(self, args):
        serving.tensor_path()  # numpy 2 under a numpy-1 stub: use DLPack, or fail loading with the fix
        self.ops = serving.load_ops()
        config, self.params, self.dtypes = serving.read_params(args, "pipeline")
        self.out = self.params["outputs"]
        self.counter = 0
        self.family = pb_utils.MetricFamily(
            name="tritonfleet_route_total", description="routing decisions of tritonfleet route pipelines",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.metrics = {r: self.family.Metric(labels={"pipeline": config["name"], "route": r}) for r in ROUTES}
        watch = monitoring.load_config(config)  # traffic metrics for tritonfleet monitor (tritonfleet_monitoring.py)
        self.traffic = monitoring.PipelineMetrics(pb_utils, watch, ("stage", "request")) if watch else None

    def finalize(self):
        if self.traffic is not None:
            self.traffic.close()  # hands Triton the counts added since the last flush

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._handle(r) for r in requests)))

    async def _handle(self, request):
        try:
            return await self._route(request)
        except (serving.StageError, ValueError) as exc:
            if self.traffic is not None:
                self.traffic.error("stage" if isinstance(exc, serving.StageError) else "request")
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"route: {exc}"))

    async def _route(self, request):
        p = self.params
        x = [serving.input_array(request, n) for n in p["inputs"]]
        compared = None  # (current, candidate) scores of a shadowed request, for member disagreement
        to_candidate = self.ops.routes_to_candidate(self.counter, p["candidate_fraction"])
        self.counter += 1
        if to_candidate:
            try:
                scores, route = await serving.call_stage_async(p["candidate"], x), 1
                self.metrics["candidate"].increment(1)
            except serving.StageError:
                if not p["fallback"]:
                    raise
                scores, route = await serving.call_stage_async(p["current"], x), 2
                self.metrics["fallback"].increment(1)
        elif p["shadow"]:
            current, shadow = await asyncio.gather(serving.call_stage_async(p["current"], x),
                                                   serving.call_stage_async(p["candidate"], x),
                                                   return_exceptions=True)
            if isinstance(current, BaseException):
                raise current
            scores, route = current, 0
            self.metrics["current"].increment(1)
            self.metrics["shadow_error" if isinstance(shadow, BaseException) else "shadow"].increment(1)
            compared = None if isinstance(shadow, BaseException) else (current, shadow)
        else:
            scores, route = await serving.call_stage_async(p["current"], x), 0
            self.metrics["current"].increment(1)
        stage = p["candidate"] if route == 1 else p["current"]
        probs = self.ops.to_probabilities(scores, stage["activation"])
        routes = np.full((len(probs), 1), route, np.int64)
        if self.traffic is not None:
            self.traffic.answered(probs, dict(zip(p["inputs"], x)),
                                  None if compared is None else (lambda: monitoring.member_argmax(compared)),
                                  ids=lambda: [request.request_id()])
        return pb_utils.InferenceResponse(output_tensors=[
            serving.output_tensor(self.out["probabilities"], probs, self.dtypes[self.out["probabilities"]]),
            serving.output_tensor(self.out["class_index"], self.ops.class_index(probs),
                                  self.dtypes[self.out["class_index"]]),
            serving.output_tensor(p["route_output"], routes, self.dtypes[p["route_output"]]),
        ])
