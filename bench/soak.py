"""Soak the digits ensemble on the local server: every request accounted for.

    python bench/soak.py [--requests 100000] [--concurrency 16] [--kill-stub-at 0.5] [--record]

Sends a bounded number of requests (loopback only) and reports failures, latency per tenth
of the run (drift) and the server's resident memory (tritonserver + Python stubs) growth.
Goals: 0 failures and RSS growth < 10%. With --kill-stub-at F a member's stub is killed after
that fraction of the requests: the server runs supervised (it reloads the model), and the
soak client does not retry, so the failures it counts are what clients without retries
would see during the restart.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from common import ROOT, SPEC_DIR, bench_parser, machine, markdown_table, publish, today


def _kill_stub_later(server, model: str, delay: float, killed: list) -> threading.Thread:
    def run():
        time.sleep(delay)
        for proc in Path("/proc").iterdir():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args[0].endswith(b"triton_python_backend_stub") and f"/{model}/".encode() in args[1]:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(time.time())
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-stub-at", type=float, default=None, help="kill cnn_small_b's stub at this fraction")
    args = parser.parse_args(argv)

    from tritonfleet.builder.spec import load_spec
    from tritonfleet.builder.spec.splits import load_split
    from tritonfleet.clients.loadgen.soak import run_soak
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.workdir import build_examples

    results = build_examples(ROOT, ["digits"], output_dir=args.output, progress=False)
    x = load_split(load_spec(SPEC_DIR / "digits.yaml"), "test").inputs[0]
    killed: list = []
    supervised = args.kill_stub_at is not None
    with TritonServer(results["digits"].repository, model_control_mode="explicit" if supervised else "none",
                      supervise=supervised) as server:
        if supervised:  # estimate the time of the kill from a short probe of the rate
            probe = run_soak(server.url("grpc"), args.model, [x], total=2000, concurrency=args.concurrency)
            _kill_stub_later(server, "cnn_small_b", args.kill_stub_at * args.requests / probe.requests_per_s, killed)
        result = run_soak(server.url("grpc"), args.model, [x], total=args.requests, concurrency=args.concurrency,
                          server_pid=server.pid, warmup=min(1000, args.requests // 10))
        restarts = dict(server.supervisor.restarts) if supervised else {}

    table = markdown_table(
        ["tenth of the run", "requests/s", "p50 ms", "p99 ms"],
        [[i + 1, f"{s['requests_per_s']:,.0f}", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}"]
         for i, s in enumerate(result.segments)],
    )
    summary = (f"{result.completed:,} of {result.total:,} requests completed, {result.failures} failed "
               f"({'goal met' if result.failures == 0 else 'goal missed'}: 0), in {result.seconds:.0f}s "
               f"({result.requests_per_s:,.0f} requests/s); p50 drift first->last tenth {100 * result.latency_drift:+.1f}%; "
               f"server RSS {result.rss_mb[0]:,.0f} -> {result.rss_mb[-1]:,.0f} MiB ({100 * result.rss_growth:+.1f}%, "
               f"goal < 10%: {'met' if result.rss_growth < 0.10 else 'missed'})")
    if supervised:
        summary += (f"; stub of cnn_small_b killed at {args.kill_stub_at:.0%} of the run: supervisor restarts "
                    f"{restarts}; errors seen by this non-retrying client: {result.error_messages}")
    text = (f"{machine()}; `{args.model}` ensemble, batch 1, concurrency {args.concurrency}, gRPC on loopback; "
            f"{today()}\n\n{summary}\n\n{table}")
    publish(__file__, text, result.to_dict(), args, argv, "soak_fault" if supervised else "soak",
            ("Soak with a stub killed mid-run" if supervised else "Soak") + " (bench/soak.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
