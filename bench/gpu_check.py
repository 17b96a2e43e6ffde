"""Each digits model in every runtime this machine has, side by side, in one run.

    python bench/gpu_check.py                 # GPU when torch sees one, else CPU
    python bench/gpu_check.py --record        # also write the table into docs/BENCHMARKS.md

Runtimes: torch eager fp32, torch fp16 (CUDA only), onnxruntime fp32/fp16/int8 (CUDA
execution provider when onnxruntime has it, else CPU) and TensorRT fp32/fp16/int8 engines
(when the tensorrt package is installed). For each: throughput at one batch size (median
of alternating timed rounds, device synchronised), the ratio to torch eager fp32, and
top-1 accuracy on the digits test split. Missing runtimes are listed with the reason.
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import ROOT, bench_parser, publish

DEFAULT_SPEC = ROOT / "ensemble_configs" / "digits.yaml"


def timed(fn: Callable[[], None], sync: Callable[[], None], seconds: float) -> float:
    """Calls per second of ``fn`` over at least ``seconds`` (after warm-up)."""
    for _ in range(3):
        fn()
    sync()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        fn()
        runs += 1
    sync()
    return runs / (time.perf_counter() - start)


def runners_for(member, model, onnx_paths: dict[str, Path], device: str, batch: np.ndarray, tmp: Path):
    """name -> (predict(x) -> logits, step() for timing) or a reason string."""
    import onnxruntime as ort
    import torch

    out: dict[str, object] = {}
    dev = torch.device(device)
    model = model.to(dev).eval()
    xb = torch.from_numpy(batch).to(dev)

    def torch_runner(m, dtype):
        def predict(x):
            with torch.inference_mode():
                return m(torch.from_numpy(x).to(dev, dtype)).float().cpu().numpy()

        def step():
            with torch.inference_mode():
                m(xb.to(dtype))
        return predict, step

    out["torch eager fp32"] = torch_runner(model, torch.float32)
    if device == "cuda":
        import copy

        out["torch fp16"] = torch_runner(copy.deepcopy(model).half(), torch.float16)
    else:
        out["torch fp16"] = "CUDA only (CPU fp16 convolutions are emulated)"

    providers = ort.get_available_providers()
    ep = "CUDAExecutionProvider" if device == "cuda" and "CUDAExecutionProvider" in providers else "CPUExecutionProvider"
    name = member.inputs[0].name
    for precision, path in onnx_paths.items():
        session = ort.InferenceSession(str(path), providers=[ep])
        out[f"onnxruntime {precision} ({ep.removesuffix('ExecutionProvider')})"] = (
            lambda x, s=session: s.run(None, {name: x})[0],
            lambda s=session: s.run(None, {name: batch}),
        )

    from tritonfleet.builder.stages.onnx2trt import BatchProfile, BuildEngine, run_engine, tensorrt_version

    if tensorrt_version() is None:
        out["tensorrt"] = "tensorrt package not installed"
    elif device != "cuda":
        out["tensorrt"] = "needs a CUDA GPU"
    else:
        profile = BatchProfile(1, len(batch), len(batch))
        for precision, path in onnx_paths.items():
            plan = BuildEngine(path, tmp / f"{member.name}_{precision}.plan", profile)()
            out[f"tensorrt {precision}"] = (
                lambda x, p=plan: run_engine(p, {name: x}, profile.max)[member.outputs[0].name],
                lambda p=plan: run_engine(p, {name: batch}, profile.max),
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repository=None)
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC,
                        help="pipeline spec (default: the digits example, trained on first use)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on GPU, 64 on CPU")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per runtime and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=None, help="comma-separated subset of the spec's models")
    args = parser.parse_args(argv)

    import torch

    from tritonfleet.builder.spec import load_spec
    from tritonfleet.builder.spec.splits import load_split
    from tritonfleet.builder.stages.load_torch import load_torch_model
    from tritonfleet.builder.stages.onnx2fp16 import convert_to_fp16
    from tritonfleet.builder.stages.onnx2int8 import quantize_int8
    from tritonfleet.builder.stages.torch2onnx import export_onnx
    from tritonfleet.examples.digits.train import ensure_trained
    from tritonfleet.examples.workdir import artifacts

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    batch_size = args.batch_size or (256 if device == "cuda" else 64)
    if args.spec.resolve() == DEFAULT_SPEC:
        ensure_trained(artifacts(ROOT), progress=False)
    spec = load_spec(args.spec)
    test, calib = load_split(spec, "test"), load_split(spec, "calibration")
    wanted = set(args.models.split(",")) if args.models else None
    members = [m for m in spec.all_models if wanted is None or m.name in wanted]
    x_test, y_test = test.inputs[0], test.labels
    batch = np.ascontiguousarray(x_test[np.arange(batch_size) % len(x_test)])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for member in members:
            model = load_torch_model(member.model)
            fp32 = export_onnx(model, [x_test[:8]], member.inputs, member.outputs, tmp / member.name / "fp32.onnx",
                               opset=spec.opset, name=member.name)
            onnx_paths = {
                "fp32": fp32,
                "fp16": convert_to_fp16(fp32, tmp / member.name / "fp16.onnx"),
                "int8": quantize_int8(fp32, tmp / member.name / "int8.onnx", calib.inputs,
                                      [t.name for t in member.inputs], spec.precision.calibration),
            }
            runners = runners_for(member, model, onnx_paths, device, batch, tmp)
            live = {k: v for k, v in runners.items() if not isinstance(v, str)}
            rates: dict[str, list[float]] = {k: [] for k in live}
            for _ in range(args.rounds):  # alternate runtimes so drift hits all alike
                for key, (_, step) in live.items():
                    rates[key].append(timed(step, sync, args.seconds) * batch_size)
            base = float(np.median(rates["torch eager fp32"]))
            for key, (predict, _) in live.items():
                logits = np.concatenate([predict(x_test[s:s + batch_size]) for s in range(0, len(x_test), batch_size)])
                rate = float(np.median(rates[key]))
                rows.append({"model": member.name, "runtime": key, "samples_per_s": rate, "ratio": rate / base,
                             "accuracy": float((logits.argmax(1) == y_test).mean())})
            for key, reason in runners.items():
                if isinstance(reason, str):
                    rows.append({"model": member.name, "runtime": key, "skipped": reason})

    header = (f"device: {device} ({gpu}); batch {batch_size}; torch {torch.__version__}; "
              f"median of {args.rounds} alternating rounds of {args.seconds:g}s; "
              f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}")
    table = ["| model | runtime | samples/s | vs torch eager fp32 | top-1 |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        if "skipped" in r:
            table.append(f"| {r['model']} | {r['runtime']} | skipped: {r['skipped']} | | |")
        else:
            table.append(f"| {r['model']} | {r['runtime']} | {r['samples_per_s']:,.0f} | {r['ratio']:.2f}x | "
                         f"{r['accuracy']:.4f} |")
    text = "\n".join([header, "", *table])
    publish(__file__, text, {"header": header, "rows": rows}, args, argv, 'gpu_check',
            'Runtimes side by side (bench/gpu_check.py)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
