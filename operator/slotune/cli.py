"""`slotune`: the command line. Subcommands import their heavy modules lazily, so `--help` and
`crd` stay fast and do not need a cluster library."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from slotune import __version__

EXIT_USAGE = 2
LOG_LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR"}
LOG_FORMATS = ("plain", "full", "json")


class CliError(Exception):
    """A user mistake: printed as one line, exit code 2, no traceback."""


def _load_documents(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or str(error)
        raise CliError(f"{path}: not valid YAML{line}: {problem}") from None
    if not documents:
        raise CliError(f"{path}: no LLMService found (the file is empty)")
    return documents


def _knob(args: argparse.Namespace, name: str, low: int, high: int, flag: str) -> int | None:
    value: int | None = getattr(args, name)
    if value is not None and not low <= value <= high:
        raise CliError(f"{flag}={value} is outside the spec's bounds [{low}, {high}]")
    return value


def cmd_render(args: argparse.Namespace) -> int:
    from slotune.api.resource import SpecError, parse_llmservice
    from slotune.api.status import Knobs
    from slotune.render.render import initial_knobs, render_children, to_yaml

    manifests: list[dict[str, Any]] = []
    for index, document in enumerate(_load_documents(args.file)):
        where = args.file if index == 0 else f"{args.file} (document {index + 1})"
        try:
            service = parse_llmservice(document)
        except SpecError as error:
            raise CliError(f"{where}: {error}") from None
        spec = service.spec
        start = initial_knobs(spec)
        seqs, tokens = spec.batching.max_num_seqs, spec.batching.max_batched_tokens
        replicas = _knob(
            args, "replicas", spec.scaling.min_replicas, spec.scaling.max_replicas, "--replicas"
        )
        knobs = Knobs(
            replicas=start.replicas if replicas is None else replicas,
            max_num_seqs=_knob(args, "max_num_seqs", seqs.min, seqs.max, "--max-num-seqs")
            or start.max_num_seqs,
            max_batched_tokens=_knob(
                args, "max_batched_tokens", tokens.min, tokens.max, "--max-batched-tokens"
            )
            or start.max_batched_tokens,
        )
        manifests += render_children(service, knobs)
    sys.stdout.write(to_yaml(manifests))
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    from slotune.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import os

    from slotune.controller.config import ALERT_SPEEDUP_ENV, OperatorConfig

    if args.resync_seconds is not None:
        os.environ["SLOTUNE_RESYNC_SECONDS"] = str(args.resync_seconds)
    if args.prometheus_url:
        os.environ["SLOTUNE_PROMETHEUS_URL"] = args.prometheus_url
    if args.alert_speedup is not None:
        os.environ[ALERT_SPEEDUP_ENV] = args.alert_speedup
    try:
        OperatorConfig.from_env()
    except ValueError as error:
        raise CliError(str(error)) from error
    # The Helm chart configures logging through the environment; --verbose wins.
    level = "debug" if args.verbose else os.environ.get("SLOTUNE_LOG_LEVEL", "info").lower()
    log_format = os.environ.get("SLOTUNE_LOG_FORMAT", "full").lower()
    if level not in LOG_LEVELS:
        raise CliError(f"SLOTUNE_LOG_LEVEL={level!r}: use one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        raise CliError(f"SLOTUNE_LOG_FORMAT={log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    import logging

    import kopf

    import slotune.controller.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=level == "debug", log_format=kopf.LogFormat[log_format.upper()])
    logging.getLogger().setLevel(LOG_LEVELS[level])
    settings = kopf.OperatorSettings()
    # Watching listed namespaces, the operator may hold no cluster-wide permission (the Helm
    # chart's namespaced mode grants none): Kopf must not try to list namespaces and CRDs, which
    # it otherwise retries for a minute and then keeps warning about.
    settings.scanning.disabled = bool(args.namespace)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        settings=settings,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from slotune.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slotune",
        description="Keep LLM inference deployments on a latency SLO.",
    )
    parser.add_argument("--version", action="version", version=f"slotune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = commands.add_parser("crd", help="print the LLMService CustomResourceDefinition")
    crd.set_defaults(handler=cmd_crd)

    render = commands.add_parser(
        "render", help="print the Kubernetes objects an LLMService turns into"
    )
    render.add_argument("-f", "--file", required=True, help="LLMService YAML file, or - for stdin")
    render.add_argument("--replicas", type=int, help="replica count (default: minReplicas)")
    render.add_argument("--max-num-seqs", type=int, help="default: batching.maxNumSeqs.initial")
    render.add_argument(
        "--max-batched-tokens", type=int, help="default: batching.maxBatchedTokens.initial"
    )
    render.set_defaults(handler=cmd_render)

    run = commands.add_parser("run", help="run the operator (Kopf) against the current cluster")
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run.add_argument("--prometheus-url", help="default Prometheus URL (SLOTUNE_PROMETHEUS_URL)")
    run.add_argument(
        "--resync-seconds", type=float, help="status refresh and drift repair interval (15)"
    )
    run.add_argument(
        "--alert-speedup",
        metavar="N",
        help="divide every SLO alert window and `for` by N (SLOTUNE_ALERT_SPEEDUP; default 1): "
        "for tests and demos only, e.g. 60 pages within about a minute of a burn",
    )
    run.add_argument(
        "--liveness",
        default=None,
        help="serve Kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log more")
    run.set_defaults(handler=cmd_run)

    # Subcommands that live with their package register themselves here, one line each.
    importlib.import_module("slotune.sim.cli").register(commands)
    importlib.import_module("slotune.emulator.cli").register(commands)
    importlib.import_module("slotune.sandbox.cli").register(commands)

    demo = commands.add_parser("demo", help="show slotune at work on the bundled examples")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except CliError as error:
        print(f"slotune {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
