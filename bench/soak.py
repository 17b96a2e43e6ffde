"""Soak the digits ensemble on the local server: every request accounted for.

    python bench/soak.py [--requests 100000] [--concurrency 16] [--kill-stub-at 0.5] [--record]
    python bench/soak.py --smoke [--repository REPO] [--kill-stub-at 0.5]   # a quick run, for the tests

Sends a bounded number of requests (loopback only) and reports failures, latency per tenth
of the run (drift) and the server's resident memory (tritonserver + Python stubs) growth.
Goals: 0 failures and RSS growth < 10%. With --kill-stub-at F, cnn_small_b's stub is SIGKILLed
once that fraction of the requests has completed: the server runs supervised (it reloads the
model), the soak client does not retry, and the script reports, from the requests' own
timestamps, when the stub was killed, when the first request failed, when the last one did, the
first success after it (the outage) and how many requests after that failed. Every tenth of the
run's time is listed, empty ones included (an outage can leave a tenth without a success).

--record rewrites this script's section of docs/BENCHMARKS.md and its section of
docs/RELIABILITY.md (between <!-- reliability_soak[_fault]:begin/end --> markers).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from common import ROOT, bench_parser, headline, labelled, machine, markdown_table, publish, today

RELIABILITY = ROOT / "docs" / "RELIABILITY.md"
KILLED = "cnn_small_b"


def record_reliability(key: str, text: str, command: str, doc: Path = RELIABILITY) -> Path:
    """Replace what lies between ``<!-- key:begin/end -->`` in docs/RELIABILITY.md."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    content = doc.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{doc} has no {begin} ... {end} markers to write into")
    head, rest = content.split(begin, 1)
    doc.write_text(f"{head}{begin}\nCommand: `{command}`\n\n{text.rstrip()}\n{end}{rest.split(end, 1)[1]}")
    return doc


def tenths_table(result) -> str:
    def ms(value):
        return "–" if value is None else f"{value:.2f}"

    return markdown_table(
        ["tenth", "seconds", "requests", "failed", "successes/s", "p50 ms", "p99 ms"],
        [[i + 1, f"{s['start_s']:.2f}–{s['end_s']:.2f}", f"{s['requests']:,}", f"{s['failures']:,}",
          f"{s['requests_per_s']:,.0f}", ms(s["p50_ms"]), ms(s["p99_ms"])] for i, s in enumerate(result.segments)])


def summarize(result, killed: str | None, restarts: dict) -> tuple[str, str]:
    """(the summary for BENCHMARKS.md, the verdicts for RELIABILITY.md), every number from ``result``."""
    failed_goal = "met" if result.failures == 0 else "missed"
    rss_goal = "met" if result.rss_growth < 0.10 else "missed"
    drift = "n/a (a tenth without successes)" if result.latency_drift is None else f"{100 * result.latency_drift:+.1f}%"
    rss = (f"server RSS {result.rss_mb[0]:,.0f} -> {result.rss_mb[-1]:,.0f} MiB ({100 * result.rss_growth:+.1f}%, "
           f"goal < 10%: {rss_goal})" if len(result.rss_mb) >= 2 else "server RSS not sampled")
    summary = (f"{result.completed:,} of {result.total:,} requests completed, {result.failures:,} failed "
               f"(goal 0: {failed_goal}), in {result.seconds:.1f} s ({result.requests_per_s:,.0f} requests/s); "
               f"p50 of the last tenth vs the first: {drift}; {rss}")
    if killed is None:
        return summary, (f"**{result.completed:,} of {result.total:,} completed, {result.failures:,} failed** "
                         f"(goal 0: {failed_goal}); {rss}; p50 of the last tenth vs the first {drift}.")
    kill = ("the stub was not killed (the run ended first)" if result.fault_s is None else
            f"`{killed}`'s stub SIGKILLed at {result.fault_s:.2f} s, after {result.fault_after:,} of "
            f"{result.total:,} requests had completed")
    outage = result.outage_summary()
    if outage is None:
        seen = "no request failed"
    else:
        seen = (f"first failed request at {outage['first_failure_s']:.2f} s, last at {outage['last_failure_s']:.2f} s, "
                f"first success after it at {outage['recovered_s']:.2f} s: an outage of {outage['seconds']:.2f} s; "
                f"of the {outage['requests_after']:,} requests after it, {outage['failed_after']:,} failed")
    errors = "; ".join(f"{n:,}× `{m}`" for m, n in result.error_messages.items()) or "none"
    verdicts = (f"{kill}; supervisor restarts {restarts or 'none'}. Seen by the non-retrying client: "
                f"{result.failures:,} of {result.total:,} requests failed ({errors}); {seen}; {rss}.")
    return f"{summary}; {verdicts}", verdicts


def headlines(result, killed: str | None) -> list[dict]:
    """The rows of BENCHMARKS.md's Headlines table, derived from ``result``."""
    rss = (f"{100 * result.rss_growth:+.1f}%" if len(result.rss_mb) >= 2 else "not sampled")
    rss_row = headline("server RSS growth over the run", rss, "< 10%",
                       "met" if len(result.rss_mb) >= 2 and result.rss_growth < 0.10 else "missed")
    if killed is None:
        return [headline(f"soak: failed requests of {result.total:,}", f"{result.failures:,}", "0",
                         "met" if result.failures == 0 else "missed"), rss_row]
    outage = result.outage_summary()
    return [headline(f"stub of `{killed}` killed, client without retries: failed requests of {result.total:,}",
                     f"{result.failures:,}", "(shows the raw effect)", "measured"),
            headline("outage seen by that client (first failure to first success after the last)",
                     "none" if outage is None else f"{outage['seconds']:.2f} s", "(shows the raw effect)", "measured"),
            headline("failed requests after the outage", "0" if outage is None else f"{outage['failed_after']:,}", "0",
                     "met" if outage is None or outage["failed_after"] == 0 else "missed"),
            rss_row]


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--requests", type=int, default=None, help="default 100,000 (--smoke: 1,500)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-stub-at", type=float, default=None,
                        help=f"kill {KILLED}'s stub once this fraction of the requests has completed")
    parser.add_argument("--repository", type=Path, default=None, help="serve this built repository (no build)")
    parser.add_argument("--smoke", action="store_true", help="a short run that checks the script, not the server")
    args = parser.parse_args(argv)
    if args.smoke and args.record:
        parser.error("--smoke runs are not recorded")
    total = args.requests or (1_500 if args.smoke else 100_000)

    from tritonfleet.clients.loadgen.soak import run_soak
    from tritonfleet.clients.server import TritonServer

    if args.repository is None:
        from tritonfleet.examples.workdir import build_examples

        repository = build_examples(ROOT, ["digits"], output_dir=args.output, progress=False)["digits"].repository
    else:
        repository = args.repository
    x = labelled(repository)[0][0]  # the test split the build recorded
    supervised = args.kill_stub_at is not None
    with TritonServer(repository, model_control_mode="explicit" if supervised else "none",
                      supervise=supervised) as server:
        fault = None
        if supervised:
            def fault():
                (pid,) = [pid for pid, model in server.supervisor.stub_processes() if model == KILLED]
                os.kill(pid, signal.SIGKILL)

        result = run_soak(server.url("grpc"), args.model, [x], total=total, concurrency=args.concurrency,
                          server_pid=server.pid, warmup=min(1000, total // 10), fault=fault,
                          fault_at=args.kill_stub_at or 0.5)
        restarts = dict(server.supervisor.restarts) if supervised else {}

    summary, verdicts = summarize(result, KILLED if supervised else None, restarts)
    text = (f"{machine()}; `{args.model}` ensemble, batch 1, concurrency {args.concurrency}, gRPC on loopback; "
            f"{today()}\n\n{summary}\n\n{tenths_table(result)}")
    key = "soak_fault" if supervised else "soak"
    publish(__file__, text, result.to_dict(), args, argv, key,
            ("Soak with a stub killed mid-run" if supervised else "Soak") + " (bench/soak.py)",
            headlines(result, KILLED if supervised else None))
    if args.record:
        command = " ".join(["python bench/soak.py", *(argv if argv is not None else sys.argv[1:])])
        print(f"recorded in {record_reliability(f'reliability_{key}', verdicts, command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
