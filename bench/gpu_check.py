"""The GPU path in one command: a ResNet-50-like model in-process and served, side by side.

    python bench/gpu_check.py             # CUDA when torch sees a GPU: ResNet-50 layout, 224x224, batch 1/32/256;
                                          # else a small CPU run (narrow ResNet, 64x64, batch 1/8/32)
    python bench/gpu_check.py --record    # also write the tables into docs/BENCHMARKS.md
    python bench/gpu_check.py --from-json gpu_check.json --record   # record a run made on another machine

In-process, every runtime gets its inputs already on the device and is timed with the device
synchronised: torch eager fp32, fp16 and channels_last, torch.compile, the TorchScript files the
server runs, onnxruntime through IOBinding (inputs and outputs bound on the device; CUDA execution
provider when onnxruntime-gpu is installed) and TensorRT (engine, context and buffers built once;
when the tensorrt package is installed). Served: the model (uint8 images, normalised inside it)
is built with `tritonfleet build` into TorchScript members (fp32, fp16 on CUDA; no dynamic batching,
so the runner executes exactly the request's batch) and served by the tritonserver bundled in
nvidia-pytriton, whose Python-backend torch runner works on CUDA with DLPack in and out. The
project's load generator measures it with tensors in the gRPC messages, with system shared memory
and with CUDA shared memory (GPU only), each case in alternating rounds (in-process, served,
served, in-process, ...) with the same TorchScript file in this process at the same batch and
precision: served / in-process is the median of the rounds' ratios, with their range. Served
outputs are compared with in-process outputs first (non-empty, equal within the precision's
tolerance); a mismatch makes the exit code 1.

GPU recipe (the device tool: a bare H100 with torch 2.11 + CUDA 13, Python 3.12, numpy 2, no
network, at most 64 MiB carried). Here, once, in the repository root:

    echo /.whl/ >> .git/info/exclude
    D="python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl"
    $D --platform manylinux_2_35_x86_64 nvidia-pytriton==0.7.0
    $D --platform manylinux_2_17_x86_64 pydantic-core==2.46.5 python-rapidjson==1.20
    $D --platform any tritonclient==2.51.0 pydantic==2.13.5 annotated-types==0.8.0 typing-inspection==0.4.4

(57 MB: nvidia-pytriton, 55 MB, is the server; the rest is what the image lacks for the
project's builder and clients: the pure-Python tritonclient, the rapidjson it imports,
pydantic.) Then the device tool's `run` with carry [".whl"], timeout_s 600, command:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 &&
    python3 bench/gpu_check.py --json $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

and back here: `python bench/gpu_check.py --from-json <files_at>/gpu_check.json --record`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import ROOT, bench_parser, import_project_from_clone, publish

RESNET_FILE = ROOT / "bench" / "resnet.py"
SIZES = {  # device -> (architecture class in bench/resnet.py, image side, classes, batch sizes)
    "cuda": ("ResNetLike", 224, 1000, (1, 32, 256)),
    "cpu": ("SmallResNetLike", 64, 10, (1, 8, 32)),
}
TRANSPORTS = ("grpc", "system", "cuda")  # tensors in the messages, system / CUDA shared memory
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}  # served vs in-process, relative to the largest |logit|
GOAL_RATIO, GOAL_BATCH = 0.8, 32


# --------------------------------------------------------------------------- timing
def rate(step: Callable[[], object], sync: Callable[[], None], seconds: float, batch: int) -> float:
    """Samples per second of ``step`` over at least ``seconds`` (after warm-up), device synchronised."""
    for _ in range(3):
        step()
    sync()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        step()
        runs += 1
    sync()
    return runs * batch / (time.perf_counter() - start)


# --------------------------------------------------------------------------- in-process runtimes
def torch_variants(model, device: str, compile_model: bool) -> dict[str, object]:
    """name -> (module, dtype of the weights, channels_last) or a reason it is skipped."""
    import copy

    import torch

    out: dict[str, object] = {"torch eager fp32": (model, False)}
    out["torch eager fp32 channels_last"] = (copy.deepcopy(model).to(memory_format=torch.channels_last), True)
    if device == "cuda":
        half = copy.deepcopy(model).half()
        out["torch eager fp16"] = (half, False)
        half_cl = copy.deepcopy(half).to(memory_format=torch.channels_last)
        out["torch eager fp16 channels_last"] = (half_cl, True)
        best = half_cl
    else:
        out["torch eager fp16"] = "CUDA only (CPU fp16 convolutions are reference kernels)"
        best = out["torch eager fp32 channels_last"][0]
    if not compile_model:
        out["torch.compile"] = "skipped (--skip compile)"
    else:
        label = "torch.compile fp16 channels_last" if device == "cuda" else "torch.compile fp32 channels_last"
        out[label] = (torch.compile(best), True)
    return out


class OrtRunner:
    """onnxruntime with IOBinding: the input is copied to the device once, outputs stay there."""

    def __init__(self, path: Path, x: np.ndarray, device: str, threads: int = 0):
        import onnxruntime as ort

        cuda = device == "cuda"
        provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=[provider])
        self.binding = self.session.io_binding()
        where = ("cuda", 0) if cuda else ("cpu", 0)
        self.x = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), *where)
        self.binding.bind_ortvalue_input(self.session.get_inputs()[0].name, self.x)
        for o in self.session.get_outputs():
            self.binding.bind_output(o.name, where[0], where[1])

    def step(self):
        self.session.run_with_iobinding(self.binding)

    def output(self) -> np.ndarray:
        self.step()
        return self.binding.copy_outputs_to_cpu()[0]


class TrtRunner:
    """A TensorRT engine with its execution context and device buffers made once."""

    def __init__(self, plan: Path, x, batch: int):
        import tensorrt as trt
        import torch

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.buffers[name] = x.contiguous()
                self.context.set_input_shape(name, tuple(x.shape))
        for name in names:
            if name not in self.buffers:
                dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
                self.buffers[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
                self.output_name = name
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.batch = batch

    def step(self):
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()

    def output(self) -> np.ndarray:
        self.step()
        return self.buffers[self.output_name].float().cpu().numpy()


def in_process(args, model, repo: Path, device: str, batches, side: int, torchscript: dict[str, Path]) -> list[dict]:
    """Every in-process runtime at every batch size, alternating runtimes within each round."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runtimes: dict[str, object] = torch_variants(model, device, "compile" not in args.skip)
    for precision, path in torchscript.items():
        runtimes[f"torchscript {precision} (the served file)"] = ("torchscript", path)
    onnx = repo / "resnet_check_member" / "1" / "model.onnx"
    if "onnxruntime" in args.skip:
        runtimes["onnxruntime"] = "skipped (--skip onnxruntime)"
    else:
        import onnxruntime as ort

        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            runtimes["onnxruntime"] = "onnxruntime-gpu is not installed (no CUDAExecutionProvider)"
        else:
            runtimes[f"onnxruntime fp32 IOBinding ({'CUDA' if device == 'cuda' else 'CPU'})"] = ("onnx", onnx)
    if importlib.util.find_spec("tensorrt") is None:
        runtimes["tensorrt"] = "the tensorrt package is not installed"
    elif device != "cuda":
        runtimes["tensorrt"] = "needs a CUDA GPU"
    else:
        runtimes["tensorrt fp32"] = ("trt", onnx)

    rows: list[dict] = []
    reference: dict[int, np.ndarray] = {}
    for batch in batches:
        x_host = images(batch, side, seed=batch)
        x = torch.from_numpy(x_host).to(device)
        steps: dict[str, Callable[[], object]] = {}
        outputs: dict[str, np.ndarray] = {}
        for name, value in runtimes.items():
            if isinstance(value, str):
                continue
            try:
                steps[name], outputs[name] = make_step(value, x, x_host, batch, device, repo, args.threads)
            except Exception as exc:  # a runtime that cannot run here is reported, the others go on
                rows.append({"runtime": name, "batch": batch, "skipped": f"{type(exc).__name__}: {exc}"[:300]})
        reference[batch] = outputs["torch eager fp32"]
        rates: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                rates[name].append(rate(step, sync, args.seconds, batch))
        base = statistics.median(rates["torch eager fp32"])
        for name in steps:
            value = statistics.median(rates[name])
            rows.append({"runtime": name, "batch": batch, "samples_per_s": value, "vs_eager_fp32": value / base,
                         "rounds": rates[name], "max_abs_diff_vs_eager_fp32":
                         float(np.abs(outputs[name].astype(np.float64) - reference[batch]).max())})
    for name, value in runtimes.items():
        if isinstance(value, str):
            rows.append({"runtime": name, "skipped": value})
    return rows


def make_step(value, x, x_host: np.ndarray, batch: int, device: str, repo: Path, threads: int = 0):
    """(step, output as numpy) of one runtime on one device-resident batch."""
    import torch

    if value[0] == "onnx":
        runner = OrtRunner(value[1], x_host, device, threads)
        return runner.step, runner.output()
    if value[0] == "trt":
        from tritonfleet.builder.spec.options import BatchProfile
        from tritonfleet.builder.stages.onnx2trt import BuildEngine

        plan = BuildEngine(value[1], repo.parent / f"resnet_b{batch}.plan", BatchProfile(1, batch, batch))()
        runner = TrtRunner(plan, x, batch)
        return runner.step, runner.output()
    if value[0] == "torchscript":
        module = load_torchscript(value[1], device)
        channels_last = device == "cuda"
    else:
        module, channels_last = value
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def step():
        with torch.inference_mode():
            return module(xin)

    out = step()
    out = out[0] if isinstance(out, (tuple, list)) else out
    return step, out.float().cpu().numpy()


def load_torchscript(path: Path, device: str):
    import torch

    module = torch.jit.load(str(path), map_location=device).eval()
    return module.to(memory_format=torch.channels_last) if device == "cuda" else module


def images(batch: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, side, side), dtype=np.uint8)


# --------------------------------------------------------------------------- build and serve
def build_repository(work: Path, device: str, arch: str, side: int, classes: int, max_batch: int, threads: int):
    """Random weights -> checkpoint -> spec -> `tritonfleet build` (TorchScript members served)."""
    import torch
    import yaml

    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec

    module_spec = importlib.util.spec_from_file_location("gpu_check_resnet", RESNET_FILE)
    resnet = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(resnet)
    torch.manual_seed(0)
    model = getattr(resnet, arch)(num_classes=classes).eval()
    torch.save(model.state_dict(), work / "resnet.pt")
    precisions = ["fp32", "fp16"] if device == "cuda" else ["fp32"]
    spec = {
        "name": "resnet_check", "target": "local", "output_dir": str(work / "repository"),
        "serving": {"max_batch_size": max_batch, "instances": 1, "device": "gpu" if device == "cuda" else "cpu",
                    "dynamic_batching": {"enabled": False}, "onnxruntime_threads": threads},
        "members": [{
            "name": "resnet_check_member",
            "model": {"architecture": f"{RESNET_FILE}:{arch}", "kwargs": {"num_classes": classes},
                      "checkpoint": str(work / "resnet.pt")},
            "inputs": [{"name": "image", "dtype": "uint8", "shape": [3, side, side]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [classes]}],
        }],
        "fusion": {"type": "none"},
        "formats": {"variants": ["onnx", "torchscript"], "serve": "torchscript", "channels_last": device == "cuda"},
        # random weights: top-1 of near-equal logits means nothing, so fp16 is bounded by its error alone
        "precision": {"variants": precisions, "serve": "fp32"},
        "parity": {"samples": 8, "fp32": {"atol": 1e-3, "rtol": 1e-3},
                   "fp16": {"atol": 0.1, "rtol": 0.05, "min_top1_agreement": 0.0}},
    }
    path = work / "resnet_check.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = build(load_spec(path), spec_path=path, progress=False)
    return model, result


def served(args, server, device: str, batches, side: int, torchscript: dict[str, Path]) -> tuple[list[dict], list[str]]:
    """Correctness, then ABBA rounds of served vs in-process for every model, transport and batch."""
    import torch

    from tritonfleet.clients.loadgen import LoadConfig, run_load

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    url = server.url("grpc")
    rows, problems = [], []
    transports = [t for t in TRANSPORTS if t != "cuda" or device == "cuda"]
    for precision, path in torchscript.items():
        model_name = "resnet_check_member_ts" + ("" if precision == "fp32" else f"_{precision}")
        module = load_torchscript(path, device)
        for transport in transports:
            # correctness first: a non-empty output equal to the same file run here
            x_host = images(max(batches), side, seed=7)
            with server.client("grpc", shared_memory="none" if transport == "grpc" else transport) as client:
                got = client.infer(model_name, x_host)["logits"]
            with torch.inference_mode():
                want = module(torch.from_numpy(x_host).to(device))
            want = (want[0] if isinstance(want, (tuple, list)) else want).float().cpu().numpy()
            diff = float(np.abs(got.astype(np.float64) - want).max() / max(1.0, float(np.abs(want).max())))
            if got.shape != want.shape or not diff <= TOLERANCE[precision]:
                problems.append(f"{model_name} over {transport}: outputs {list(got.shape)} differ from in-process "
                                f"{list(want.shape)} by {diff:.3g} (relative; tolerance {TOLERANCE[precision]:g})")
            for batch in batches:
                x = torch.from_numpy(images(batch, side, seed=batch)).to(device)
                xin = x.contiguous(memory_format=torch.channels_last) if device == "cuda" else x

                def step(module=module, xin=xin):
                    with torch.inference_mode():
                        return module(xin)

                config = LoadConfig(model_name, concurrency=args.concurrency, batch_size=batch,
                                    warmup_s=args.warmup, window_s=args.window, max_windows=args.max_windows,
                                    shared_memory="none" if transport == "grpc" else transport, engine="callback")
                dataset = [images(batch, side, seed=batch)]
                inproc, serv, stable = [], [], []
                for r in range(args.rounds):  # ABBA: in-process first in even rounds, served first in odd ones
                    order = ("in", "served") if r % 2 == 0 else ("served", "in")
                    for which in order:
                        if which == "in":
                            inproc.append(rate(step, sync, args.seconds, batch))
                        else:
                            result = run_load(url, config, dataset)
                            serv.append(result.infer_per_s if result.errors == 0 else 0.0)
                            stable.append(result.stable)
                            if result.errors:
                                problems.append(f"{model_name} over {transport}, batch {batch}: {result.errors} errors "
                                                f"({result.error_messages})")
                ratios = [s / i for s, i in zip(serv, inproc)]
                rows.append({"model": model_name, "precision": precision, "transport": transport, "batch": batch,
                             "served_per_s": statistics.median(serv), "in_process_per_s": statistics.median(inproc),
                             "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                             "served_rounds": serv, "in_process_rounds": inproc, "stable": all(stable),
                             "max_rel_diff": diff})
    return rows, problems


# --------------------------------------------------------------------------- report
def render(data: dict) -> str:
    lines = [data["header"], "", "In-process (inputs on the device, device synchronised; median of alternating rounds):", "",
             "| runtime | batch | samples/s | vs eager fp32 | max abs diff vs eager fp32 |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in data["in_process"]:
        if "skipped" in r:
            continue
        lines.append(f"| {r['runtime']} | {r['batch']} | {r['samples_per_s']:,.0f} | {r['vs_eager_fp32']:.2f}x | "
                     f"{r['max_abs_diff_vs_eager_fp32']:.2e} |")
    skipped = sorted({(r["runtime"], r["skipped"]) for r in data["in_process"] if "skipped" in r})
    for name, reason in skipped:
        lines.append(f"| {name} | | skipped: {reason} | | |")
    lines += ["", f"Served by the bundled tritonserver (torch runner, {data['device']}; concurrency "
                  f"{data['concurrency']}, no dynamic batching) ÷ the same TorchScript file in-process "
                  "(median of ABBA rounds [range]):", "",
              "| model | transport | batch | served samples/s | in-process samples/s | served ÷ in-process | stable | "
              "max rel diff |", "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    names = {"grpc": "gRPC tensors", "system": "system shm", "cuda": "CUDA shm"}
    for r in data["served"]:
        lines.append(f"| {r['precision']} | {names[r['transport']]} | {r['batch']} | {r['served_per_s']:,.0f} | "
                     f"{r['in_process_per_s']:,.0f} | {r['ratio']:.2f} [{r['ratio_min']:.2f}–{r['ratio_max']:.2f}] | "
                     f"{'yes' if r['stable'] else 'NO'} | {r['max_rel_diff']:.1e} |")
    lines += ["", *goal_lines(data)]
    if data.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in data["notes"]]]
    if data["problems"]:
        lines += ["", "Problems:", *[f"- {p}" for p in data["problems"]]]
    return "\n".join(lines)


def goal_lines(data: dict) -> list[str]:
    if data["device"] != "cuda":
        return ["Goals (issue 16) apply to the CUDA run; this is the CPU run of the same code."]
    out = []
    for r in data["served"]:
        if r["transport"] == "cuda" and r["batch"] >= GOAL_BATCH:
            met = r["ratio_min"] >= GOAL_RATIO
            out.append(f"- CUDA shm ÷ in-process, {r['precision']}, batch {r['batch']}: {r['ratio']:.2f} "
                       f"[{r['ratio_min']:.2f}–{r['ratio_max']:.2f}] — goal >= {GOAL_RATIO}: "
                       f"{'met' if met else 'MISSED'}")
    compiled = [r for r in data["in_process"] if r.get("runtime", "").startswith("torch.compile") and "skipped" not in r]
    if compiled and data["served"]:
        top = max(b for b in (r["batch"] for r in data["served"]))
        best = max((r for r in data["served"] if r["batch"] == top), key=lambda r: r["served_per_s"])
        target = next((r["samples_per_s"] for r in compiled if r["batch"] == top), None)
        if target:
            out.append(f"- best served variant at batch {top} ({best['precision']}, {best['transport']}): "
                       f"{best['served_per_s']:,.0f}/s vs {compiled[0]['runtime']} in-process {target:,.0f}/s — goal >=: "
                       f"{'met' if best['served_per_s'] >= target else 'MISSED'}")
    return out


# --------------------------------------------------------------------------- main
def parse(argv):
    parser = bench_parser(__doc__, repository=None)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,32,256 on CUDA, 1,8,32 on CPU)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timed seconds per in-process measurement (default 0.5 on CUDA, 1 on CPU)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per case (2: ABBA)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight while serving")
    parser.add_argument("--warmup", type=float, default=None, help="load generator warm-up seconds (0.5 / 1)")
    parser.add_argument("--window", type=float, default=None, help="load generator window seconds (0.5 / 1)")
    parser.add_argument("--max-windows", type=int, default=8, help="load generator windows at most (stability rule)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op CPU threads of every runtime, in-process and served (default 1 on CPU: "
                             "on a shared box torch's spinning OpenMP threads can be 100x slower than one; "
                             "0 on CUDA: the libraries decide)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: compile, onnxruntime, served")
    parser.add_argument("--from-json", type=Path, default=None, help="render (and --record) a run saved with --json")
    args = parser.parse_args(argv)
    for name in ("seconds", "warmup", "window"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    if args.threads is not None and args.threads < 0:
        parser.error("--threads must be >= 0")
    for name in ("rounds", "concurrency", "max_windows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - {"compile", "onnxruntime", "served"}
    if unknown:
        parser.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))} (use compile, onnxruntime, served)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        publish(__file__, render(data), data, args, argv, "gpu_check", "The GPU path, in-process and served (bench/gpu_check.py)")
        return 1 if data["problems"] else 0
    import_project_from_clone()
    missing = [m for m in ("torch", "tritonclient", "rapidjson", "pydantic", "pytriton", "yaml", "onnx", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: missing Python packages: {', '.join(missing)}; see the GPU recipe in --help", file=sys.stderr)
        return 2
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    arch, side, classes, default_batches = SIZES[device]
    for name in ("seconds", "warmup", "window"):  # a GPU does many batches in half a second
        if getattr(args, name) is None:
            setattr(args, name, 0.5 if device == "cuda" else 1.0)
    if args.threads is None:
        args.threads = 0 if device == "cuda" else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(default_batches)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()

    from tritonfleet.clients.server import TritonServer

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        model, result = build_repository(work, device, arch, side, classes, max(batches), args.threads)
        model = model.to(device)
        repo = result.repository
        torchscript = {p.precision: repo / p.config.name / "1" / "model.pt" for p in result.models
                       if p.format == "torchscript"}
        # optional build steps that failed (e.g. fp16 ONNX without onnxconverter-common) are notes, not failures
        notes = [f"build: {s.name}: {s.message.strip().splitlines()[-1]}" for s in result.problems]
        problems: list[str] = []
        rows = in_process(args, model, repo, device, batches, side, torchscript)
        served_rows: list[dict] = []
        if "served" not in args.skip:
            extra = ["--cuda-memory-pool-byte-size=0:1073741824"] if device == "cuda" else []
            with contextlib.ExitStack() as stack:
                server = stack.enter_context(TritonServer(repo, log_path=work / "tritonserver.log", extra_args=extra))
                served_rows, serve_problems = served(args, server, device, batches, side, torchscript)
                problems += serve_problems
    header = (f"device: {device} ({gpu}); model: {arch} ({side}x{side} uint8 inputs, {classes} classes, random weights); "
              f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}; "
              f"{args.rounds} alternating rounds, {args.seconds:g}s in-process per round; "
              f"{args.threads or 'default'} CPU thread(s) per runtime; "
              f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}")
    data = {"header": header, "device": device, "concurrency": args.concurrency, "batches": batches,
            "in_process": rows, "served": served_rows, "problems": problems, "notes": notes}
    publish(__file__, render(data), data, args, argv, "gpu_check", "The GPU path, in-process and served (bench/gpu_check.py)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
