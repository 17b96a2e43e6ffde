"""Conformance: real architectures built fp32/fp16/int8, served, compared with PyTorch through the
server at several sizes of every dynamic axis.

For each case of tritonfleet.examples.conformance.suite (all, or --cases / --fast): write its
checkpoint, data and spec, `tritonfleet build` it into one repository, serve that repository on
one local tritonserver, then for every built variant and every size point parity tried (the
data's sizes, the smallest, a larger one) send the inputs through the server and compare with
PyTorch fp32: fp32 within atol 1e-4 scaled to the output's magnitude, fp16/int8 with the
tolerances the spec states. Ensembles are checked too (the mean of the members' softmaxes).
Then bad requests: a value outside a declared range, NaN in a finite input, an axis outside its
bounds; each must be one clear error naming the input, and the server must answer the next good
request.

    python bench/conformance.py --fast                 # the test suite's subset
    python bench/conformance.py --record               # every case -> docs/CONFORMANCE.md
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, bench_parser, machine, markdown_table, today

CONFORMANCE = ROOT / "docs" / "CONFORMANCE.md"
FP32_ATOL = 1e-4  # scaled by max(1, max |reference|) per output


def parse_args(argv):
    parser = bench_parser(__doc__, repository=None)
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--fast", action="store_true", help="only the cases the test suite runs")
    parser.add_argument("--workdir", type=Path, default=None, help="where specs, checkpoints and the repository go")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    import tempfile

    from tritonfleet.examples.conformance.suite import CASES

    args = parse_args(argv)
    names = args.cases.split(",") if args.cases else [n for n, c in CASES.items() if c.fast or not args.fast]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tritonfleet-conformance-"))
    started = time.perf_counter()
    rows, bad = run(names, workdir)
    raw = {"cases": rows, "bad_requests": bad, "seconds": time.perf_counter() - started, "machine": machine(),
           "in_flight_at_stop": in_flight_at_stop(workdir / "tritonserver.log")}
    text = render(rows, bad)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    if args.record:
        command = " ".join(["python bench/conformance.py", *(argv if argv is not None else sys.argv[1:])])
        CONFORMANCE.write_text(f"# Conformance\n\nCommand: `{command}` ({today()}, {machine()})\n\n{text}\n")
        print(f"recorded in {CONFORMANCE}")
    failed = [r["case"] for r in rows if not r["status"].startswith("pass")] + [b["case"] for b in bad if not b["ok"]]
    return 1 if failed else 0


# --------------------------------------------------------------------------- the run
def run(names: list[str], workdir: Path) -> tuple[list[dict], list[dict]]:
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.conformance.suite import CASES, write_suite

    specs = write_suite(workdir, names)
    built, rows = {}, {}
    for name, path in specs.items():
        case = CASES[name]
        try:
            spec = load_spec(path)
            result = build(spec, spec_path=path, progress=False)
            built[name] = (spec, result)
        except Exception as exc:  # a case that does not build is a row with its reason, not a crash
            rows[name] = _row(case, None, None, status="fail", reason=f"build: {_line(exc)}")
    bad: list[dict] = []
    if built:
        repo = next(iter(built.values()))[1].repository
        with TritonServer(repo, log_path=workdir / "tritonserver.log") as server, server.client("grpc") as client:
            for name, (spec, result) in built.items():
                try:
                    rows[name] = check_case(CASES[name], spec, result, client)
                except Exception as exc:  # report the case, go on with the others
                    rows[name] = _row(CASES[name], spec, None, status="fail", reason=f"served check: {_line(exc)}")
            for name, (spec, _) in built.items():
                bad += bad_requests(CASES[name], spec, client)
    return [rows[n] for n in names], bad


def check_case(case, spec, result, client) -> dict:
    """Served outputs of every variant (and the pipeline) against PyTorch at every size point."""
    from tritonfleet.builder.repository.plan import variant_name
    from tritonfleet.builder.spec.splits import parity_probes
    from tritonfleet.builder.stages.load_torch import load_torch_model
    from tritonfleet.builder.stages.parity import compare_outputs, run_torch

    probes = parity_probes(spec)
    precisions: dict[str, dict] = {}
    problems = [f.summary() for f in result.failed_variants]
    for m in spec.members:
        model = load_torch_model(m.model)
        names = [t.name for t in m.outputs]
        refs = [run_torch(model, p.inputs, names) for p in probes]
        for precision in spec.precisions_of(m):
            entry = precisions.setdefault(precision, {"built": True, "max_abs_error": 0.0, "top1": None, "passed": True})
            if variant_name(m, precision) not in {p.config.name for p in result.models}:
                entry["built"] = False
                continue
            tol = spec.parity.for_precision(precision)
            worst, top1, ok = 0.0, [], True
            for probe, ref in zip(probes, refs):
                got = client.infer_batched(variant_name(m, precision), dict(zip([t.name for t in m.inputs], probe.inputs)))
                atol = None if tol.atol is None else (FP32_ATOL if precision == "fp32" else tol.atol) * \
                    max(1.0, max(float(np.abs(v).max()) for v in ref.values()))
                rec = compare_outputs(ref, {n: got[n] for n in names}, atol=atol, rtol=0.0 if precision == "fp32"
                                      else tol.rtol, min_top1_agreement=tol.min_top1_agreement, precision=precision,
                                      artifact=f"{variant_name(m, precision)} at {probe.point.describe()}",
                                      raise_on_failure=False)
                worst = max(worst, rec.max_abs_error)
                top1 += [rec.top1_agreement] if rec.top1_agreement is not None else []
                if not rec.passed:
                    ok = False
                    problems.append(f"{variant_name(m, precision)} at {probe.point.describe()}: max abs error "
                                    f"{rec.max_abs_error:.3g}, top-1 {rec.top1_agreement}")
            entry["max_abs_error"] = max(entry["max_abs_error"], worst)
            entry["top1"] = min([*top1, *([entry["top1"]] if entry["top1"] is not None else [])], default=None)
            entry["passed"] = entry["passed"] and ok
    pipeline_ok = check_pipeline(spec, probes, client, problems)
    sizes = [p.point.describe() for p in probes]
    required = [p for p in case.precisions if p not in case.optional]
    failed = [p for p in required if not precisions.get(p, {}).get("built") or not precisions[p]["passed"]]
    missing = [p for p in case.optional if not precisions.get(p, {}).get("built") or not precisions[p]["passed"]]
    status = "fail" if failed or not pipeline_ok else f"pass ({', '.join(missing)}: optional, missing)" if missing \
        else "pass"
    reason = "; ".join(problems) if problems else (case.notes or "")
    return _row(case, spec, precisions, sizes=sizes, status=status, reason=reason)


def check_pipeline(spec, probes, client, problems: list[str]) -> bool:
    """The pipeline model (its guard included) against PyTorch: the member's outputs (type none) or
    the mean of the members' softmaxes (mean fusion), at every size point."""
    from tritonfleet.builder.runtime.ops import to_probabilities
    from tritonfleet.builder.stages.load_torch import load_torch_model
    from tritonfleet.builder.stages.parity import run_torch

    ok = True
    for probe in probes:
        feeds = dict(zip([t.name for t in spec.inputs], probe.inputs))
        got = client.infer_batched(spec.name, feeds)
        outs = [run_torch(load_torch_model(m.model), probe.inputs, [t.name for t in m.outputs]) for m in spec.members]
        if spec.fusion.type == "none":
            expected = outs[-1]
        else:
            probs = np.mean([to_probabilities(o[spec.fused_output(m).name], "softmax")
                             for o, m in zip(outs, spec.members)], axis=0)
            expected = {"probabilities": probs}
        for name, ref in expected.items():
            scale = max(1.0, float(np.abs(ref).max()))
            if got[name].shape != ref.shape or not np.allclose(got[name], ref, atol=FP32_ATOL * scale, rtol=0):
                ok = False
                problems.append(f"pipeline {spec.name} output {name} at {probe.point.describe()} differs from PyTorch")
    return ok


def bad_requests(case, spec, client) -> list[dict]:
    """Requests that break a declared constraint: one clear error naming the input, then the
    server still answers a good request."""
    from tritonfleet.builder.spec.splits import parity_probes
    from tritonfleet.clients.errors import ServerError

    good = dict(zip([t.name for t in spec.inputs], [x[:2] for x in parity_probes(spec)[0].inputs]))
    tries = []
    for t in spec.inputs:
        if t.range is not None:
            x = good[t.name].copy()
            x.flat[0] = t.range[0] - 1
            tries.append((f"{t.name} below its range", [t.name], {**good, t.name: x}))
        if t.finite:
            x = good[t.name].copy()
            x.flat[0] = np.nan
            tries.append((f"NaN in {t.name}", [t.name], {**good, t.name: x}))
        fixed = [i + 1 for i, d in enumerate(t.shape) if d != -1]
        if fixed and t is spec.inputs[-1]:  # a fixed axis of the wrong size: Triton's own shape check
            axis = fixed[-1]
            tries.append((f"{t.name} axis {axis} = {t.shape[axis - 1] + 1} (fixed {t.shape[axis - 1]})", [t.name],
                          {**good, t.name: _resize(good[t.name], axis, t.shape[axis - 1] + 1)}))
        for axis, a in t.dynamic_axes().items():
            tied = [n for n in good if n == t.name or _tied(spec, n, t.name, axis)]
            if a.max is not None and tied[0] == t.name:  # once per group of axes sized together
                size = a.max + a.multiple_of
                tries.append((f"{'/'.join(tied)} axis {axis} = {size} > max {a.max}", tied,
                              {n: _resize(v, axis, size) if n in tied else v for n, v in good.items()}))
    out = []
    for label, names, feeds in tries:
        for model in (spec.members[0].name, spec.name):
            started = time.perf_counter()
            try:
                client.infer(model, feeds)
                message, clear = "accepted", False
            except ServerError as exc:
                message = str(exc)
                clear = any(f"input '{n}'" in message for n in names) and "Traceback" not in message
            healthy = _answers(client, model, good)
            out.append({"case": case.name, "model": model, "request": label, "error": message[-300:],
                        "clear": clear, "healthy_after": healthy, "seconds": time.perf_counter() - started,
                        "ok": clear and healthy})
    return out


def in_flight_at_stop(log: Path) -> int | None:
    """Inferences tritonserver still counted in flight when it stopped (a member failing inside an
    ensemble can leave some, issue 12); None without a log."""
    import re

    if not log.is_file():
        return None
    counts = [int(n) for n in re.findall(r"Found (\d+) model versions that have in-flight inferences", log.read_text())]
    return max(counts, default=0)


def _tied(spec, other: str, name: str, axis: int) -> bool:
    """Inputs whose axis is sized together with ``name``'s (same bounds), e.g. BERT's three."""
    a = next(t for t in spec.inputs if t.name == name).dynamic_axes()[axis]
    o = next(t for t in spec.inputs if t.name == other).dynamic_axes().get(axis)
    return o == a


def _resize(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    return np.take(x, np.arange(size) % x.shape[axis], axis=axis)


def _answers(client, model: str, feeds: dict) -> bool:
    try:
        client.infer(model, feeds)
        return True
    except Exception:
        return False


def _row(case, spec, precisions, sizes=(), status="fail", reason="") -> dict:
    inputs = case.inputs
    return {"case": case.name, "architecture": case.title,
            "inputs": [_describe_input(t) for t in inputs],
            "precisions": precisions or {}, "sizes": list(sizes), "status": status, "reason": reason}


def _describe_input(t: dict) -> str:
    shape = ["B", *["?" if d == -1 else str(d) for d in t["shape"]]]
    dyn = [f"{a}:{v['min'] if isinstance(v, dict) else v[0]}..{(v.get('max') if isinstance(v, dict) else v[2]) or ''}"
           for a, v in t.get("dynamic", {}).items()]
    extra = (f" range {t['range']}" if "range" in t else "") + (" finite" if t.get("finite") else "")
    return f"{t['name']} {t['dtype']}[{', '.join(shape)}]" + (f" dyn {' '.join(dyn)}" if dyn else "") + extra


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# --------------------------------------------------------------------------- report
def render(rows: list[dict], bad: list[dict]) -> str:
    def cell(p: dict | None) -> str:
        if not p:
            return "not requested"
        if not p.get("built"):
            return "not built"
        top1 = "" if p.get("top1") is None else f", top-1 {p['top1']:.3f}"
        return f"{'ok' if p['passed'] else 'FAIL'} {p['max_abs_error']:.2e}{top1}"

    table = markdown_table(
        ["architecture", "inputs (dtype, dynamic axes)", "fp32", "fp16", "int8", "served sizes checked", "status"],
        [[r["architecture"], "<br>".join(r["inputs"]), *[cell(r["precisions"].get(p)) for p in ("fp32", "fp16", "int8")],
          "<br>".join(r["sizes"]), r["status"] + (f": {r['reason']}" if r["reason"] else "")] for r in rows])
    passed = sum(r["status"].startswith("pass") for r in rows)
    bad_ok = sum(b["ok"] for b in bad)
    bad_table = markdown_table(["case", "model", "request", "clear error naming the input", "server answers after"],
                               [[b["case"], b["model"], b["request"], "yes" if b["clear"] else f"no: {b['error'][:120]}",
                                 "yes" if b["healthy_after"] else "NO"] for b in bad])
    return (f"{passed} of {len(rows)} cases pass. Cells: served max abs error vs PyTorch fp32 over every size "
            f"(fp32 bound: {FP32_ATOL:g} x max(1, max |output|); fp16/int8: the spec's parity tolerances) and the "
            f"lowest top-1 agreement.\n\n{table}\n\n"
            f"Bad requests: {bad_ok} of {len(bad)} got one clear error naming the input and the server answered the "
            f"next good request.\n\n{bad_table}\n")


if __name__ == "__main__":
    sys.exit(main())
