"""Files that are copied into a repository and run inside tritonserver's Python backend.

They import nothing of tritonfleet (a repository must be self-contained): ``ops.py`` is the
fusion math in plain numpy (optionally torch), ``tritonfleet_serving.py`` the helpers the
adapters share, and each ``*_model.py`` becomes a model's ``model.py``. The builder copies
them by path (the constants below); the spec and the builder may import ``ops`` to use the
same math and checks at build time.
"""

from pathlib import Path

HERE = Path(__file__).parent
ONNX_RUNNER = HERE / "onnx_model.py"        # member of the local target: onnxruntime in the Python backend
TORCH_RUNNER = HERE / "torch_model.py"      # torch member of the local target: TorchScript, CUDA when present
FUSION_MODEL = HERE / "fusion_model.py"     # fusion step of an ensemble
CASCADE_MODEL = HERE / "cascade_model.py"   # BLS early exit
ROUTE_MODEL = HERE / "route_model.py"       # BLS A/B and shadow routing
OPS = HERE / "ops.py"                       # the fusion math, imported by path by the adapters
SERVING = HERE / "tritonfleet_serving.py"   # tensors in and out, parameters, BLS calls
GUARD_MODEL = HERE / "guard_model.py"       # first ensemble step: checks declared input constraints
INPUT_CHECKS = HERE / "input_checks.py"     # the checks (range, finite, dynamic-axis bounds), plain numpy
MONITORING = HERE / "tritonfleet_monitoring.py"  # what a served batch adds to the pipeline's metrics

BLS_MODELS = {"cascade": CASCADE_MODEL, "route": ROUTE_MODEL}
