"""``slotune sim``: replay a trace through the policies and the oracle, report and plot.

Only argparse lives at import time; the simulator is imported by the handler, so that
``slotune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

DEFAULT_POLICIES = "slotune,hpa,kpa,saturation,static,oracle"


class ProgressBar:
    """One line per phase on stderr, redrawn in place on a terminal."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._name = ""
        self._shown = -1
        self._started = time.monotonic()

    def __call__(self, name: str, fraction: float) -> None:
        if not self.enabled:
            return
        if name != self._name:
            self._finish()
            self._name, self._shown, self._started = name, -1, time.monotonic()
        percent = int(100 * fraction)
        if percent == self._shown:
            return
        self._shown = percent
        if self.tty:
            bar = "#" * (percent // 4)
            self.stream.write(f"\r  {name:<12} [{bar:<25}] {percent:3d}%")
            self.stream.flush()

    def _finish(self) -> None:
        if self._name and self._shown >= 0:
            elapsed = time.monotonic() - self._started
            prefix = "\r" if self.tty else ""
            self.stream.write(f"{prefix}  {self._name:<12} done in {elapsed:.1f} s{' ' * 24}\n")
            self.stream.flush()
        self._name = ""

    def close(self) -> None:
        if self.enabled:
            self._finish()


def _duration(text: str) -> float:
    from slotune.api.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _option(text: str) -> tuple[str, str, str]:
    name, dot, rest = text.partition(".")
    key, eq, value = rest.partition("=")
    if not dot or not eq or not name or not key:
        raise argparse.ArgumentTypeError(f"expected POLICY.FIELD=VALUE, got {text!r}")
    return name, key, value


def register(commands: Any) -> None:
    """Add ``sim`` to the ``slotune`` subcommands."""
    sim = commands.add_parser(
        "sim",
        help="replay a request trace through tuning policies and the hindsight oracle",
        description=(
            "Simulate an LLM service under a request trace with each policy tuning it, and "
            "report SLO attainment and GPU-hours against the hindsight oracle."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sim.add_argument(
        "--trace",
        required=True,
        help="azure-conv, azure-code, mooncake-synthetic, a CSV path (normalized, Azure or "
        "Mooncake columns), or a synthetic spec such as poisson:rate=50,duration=3600, "
        "step:low=10,high=30,at=1800, diurnal:mean=30,amplitude=0.6, "
        "bursty:on=60,off=10,on_s=60,off_s=240 (add tokens=azure-code|uniform|...)",
    )
    sim.add_argument("--scale", type=float, default=1.0, help="multiply the trace's rate by K")
    sim.add_argument(
        "--scale-method",
        choices=("superimpose", "compress"),
        default="superimpose",
        help="superimpose shifted copies (duration kept) or compress time (duration / K)",
    )
    sim.add_argument("--duration", type=_duration, help="keep only the first DURATION (e.g. 30m)")
    sim.add_argument("--model", default="llama-3-8b-h100", help="performance profile")
    sim.add_argument("--slo-ttft", type=_duration, default="500ms", help="TTFT target")
    sim.add_argument("--slo-itl", type=_duration, default="25ms", help="ITL target")
    sim.add_argument("--slo-e2e", type=_duration, default=None, help="E2E target (optional)")
    sim.add_argument("--percentile", type=float, default=95.0, help="SLO percentile")
    sim.add_argument("--slo-window", default="5m", help="percentile window the policies see")
    sim.add_argument(
        "--policies", default=DEFAULT_POLICIES, help="comma-separated policies (and oracle)"
    )
    sim.add_argument(
        "--policy-option",
        type=_option,
        action="append",
        default=[],
        metavar="POLICY.FIELD=VALUE",
        help="override a policy setting, e.g. hpa.target=0.7 or static.replicas=8",
    )
    sim.add_argument("--min-replicas", type=int, default=1)
    sim.add_argument("--max-replicas", type=int, default=64)
    sim.add_argument("--gpu-budget", type=int, default=None, help="GPUs the service may hold")
    sim.add_argument(
        "--initial-replicas",
        type=int,
        default=0,
        help="replicas at t=0 (0: what the first window needs, by the oracle's search)",
    )
    sim.add_argument(
        "--max-num-seqs", type=int, default=128, help="initial (and the baselines' fixed) value"
    )
    sim.add_argument(
        "--max-batched-tokens", type=int, default=8192, help="initial (and baselines') value"
    )
    sim.add_argument("--interval", default="30s", help="tuning interval of the spec")
    sim.add_argument("--cold-start", type=_duration, default="120s", help="replica cold start")
    sim.add_argument(
        "--balancer", choices=("least-outstanding", "round-robin"), default="least-outstanding"
    )
    sim.add_argument(
        "--no-slo-buckets",
        action="store_true",
        help="servers expose vLLM's default histogram buckets only (by default the SLO "
        "targets are bucket bounds, as with --custom-histogram-buckets)",
    )
    sim.add_argument("--seed", type=int, default=0, help="seed for scaling and synthetic traces")
    sim.add_argument("--json", dest="json_path", help="write the report as JSON to this path")
    sim.add_argument("--plot", dest="plot_path", help="write a PNG of the timelines here")
    sim.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    sim.set_defaults(handler=cmd_sim)


def _spec(args: argparse.Namespace, gpus: int) -> Any:
    from slotune.api.durations import format_duration
    from slotune.api.spec import LLMServiceSpec
    from slotune.policy.types import PolicySpec

    slo: dict[str, Any] = {
        "ttft": {"target": format_duration(args.slo_ttft), "percentile": args.percentile},
        "itl": {"target": format_duration(args.slo_itl), "percentile": args.percentile},
        "window": args.slo_window,
    }
    if args.slo_e2e is not None:
        slo["e2e"] = {"target": format_duration(args.slo_e2e), "percentile": args.percentile}
    seqs, tokens = args.max_num_seqs, args.max_batched_tokens
    seqs_max = max(512, seqs)
    document = {
        "model": {"name": args.model},
        "resources": {"gpusPerReplica": gpus, "tensorParallel": gpus},
        "slo": slo,
        "scaling": {
            "minReplicas": args.min_replicas,
            "maxReplicas": args.max_replicas,
            **({"gpuBudget": args.gpu_budget} if args.gpu_budget else {}),
        },
        "batching": {
            "maxNumSeqs": {"initial": seqs, "min": min(8, seqs), "max": seqs_max},
            "maxBatchedTokens": {
                "initial": tokens,
                "min": min(256, tokens),
                "max": max(16384, tokens),
            },
        },
        "tuning": {"interval": args.interval},
    }
    return PolicySpec.from_spec(LLMServiceSpec.model_validate(document))


class CliError(Exception):
    """A user mistake: one line on stderr and exit code 2, like every slotune command.

    (``slotune.cli`` has its own; importing it would tie the pure ``sim`` layer to the
    operator's modules.)
    """


EXIT_USAGE = 2


def cmd_sim(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CliError as error:
        print(f"slotune sim: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from slotune.policy.types import Setting
    from slotune.sim.cluster import ClusterConfig
    from slotune.sim.harness import HarnessConfig
    from slotune.sim.policies import known_names
    from slotune.sim.profiles import SIMULATION_PROFILES, get_profile
    from slotune.sim.report import Scenario, format_table, plot, run_comparison, to_json
    from slotune.sim.traces import resolve_trace, scale_trace

    if args.model not in SIMULATION_PROFILES:
        raise CliError(f"--model {args.model!r}: unknown; known: {', '.join(SIMULATION_PROFILES)}")
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in known_names()]
    if unknown or not names:
        raise CliError(
            f"--policies: unknown {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(known_names())}"
        )
    if args.scale <= 0:
        raise CliError("--scale must be positive")
    profile = get_profile(args.model)
    gpus = profile.tensor_parallel
    try:
        spec = _spec(args, gpus)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"invalid settings: {where}: {first['msg']}") from None
    try:
        trace = resolve_trace(args.trace, seed=args.seed)
        trace = scale_trace(trace, args.scale, args.scale_method, seed=args.seed)
        if args.duration is not None:
            trace = trace.cut(args.duration)
    except (OSError, ValueError) as error:
        raise CliError(f"--trace {args.trace}: {error}") from None
    if len(trace) == 0:
        raise CliError(f"--trace {args.trace}: no requests")

    overrides: dict[str, dict[str, str]] = {}
    for name, key, value in args.policy_option:
        if name not in known_names():
            raise CliError(f"--policy-option {name}.{key}: unknown policy {name!r}")
        overrides.setdefault(name, {})[key] = value
    scenario = Scenario(
        trace=trace,
        profile=profile,
        spec=spec,
        initial=Setting(args.initial_replicas, args.max_num_seqs, args.max_batched_tokens),
        cluster=ClusterConfig(
            gpus_per_replica=gpus,
            gpu_budget=args.gpu_budget,
            cold_start_s=args.cold_start,
            balancer=args.balancer,
        ),
        harness=HarnessConfig(slo_buckets=not args.no_slo_buckets),
        seed=args.seed,
        overrides=overrides,
    )
    bar = ProgressBar(sys.stderr, enabled=not args.no_progress)
    try:
        comparison = run_comparison(scenario, names, progress=bar)
    except ValueError as error:
        bar.close()
        raise CliError(str(error)) from None
    bar.close()
    sys.stdout.write(format_table(comparison))
    if args.json_path:
        document = to_json(comparison)
        Path(args.json_path).write_text(
            json.dumps(document, indent=1, sort_keys=False) + "\n", encoding="utf-8"
        )
    if args.plot_path:
        plot(comparison, args.plot_path)
    return 0
