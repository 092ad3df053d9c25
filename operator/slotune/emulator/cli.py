"""`slotune emulate`: a vLLM-compatible model server whose timing comes from the simulator.

Takes the flags ``vllm serve`` takes. The batch limits, the context length, the served names and
custom histogram buckets are honoured; flags that change nothing in the simulated engine
(prefix caching, quantization, ...) are accepted and listed in ``/emulator``; flags the
emulator does not know are refused, so a typo in a batch flag cannot pass unnoticed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from typing import Any

DEFAULT_PROFILE = "llama-3-8b-h100"

# vLLM flags that take a value and do not change the emulation (recorded, otherwise ignored).
_IGNORED_WITH_VALUE = (
    "--tensor-parallel-size",
    "--pipeline-parallel-size",
    "--quantization",
    "--kv-cache-dtype",
    "--gpu-memory-utilization",
    "--dtype",
    "--seed",
    "--download-dir",
    "--max-num-active-seqs",
    "--max-num-queued-reqs",
    "--max-num-queued-tokens",
    "--tokenizer",
    "--revision",
)
_IGNORED_SWITCHES = (
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
    "--enable-chunked-prefill",
    "--no-enable-chunked-prefill",
    "--enable-log-requests",
    "--disable-log-requests",
    "--disable-log-stats",
    "--trust-remote-code",
    "--enforce-eager",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="meta-llama/Meta-Llama-3-8B-Instruct")
    parser.add_argument("--host", default="127.0.0.1", help="loopback only (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=[], metavar="NAME")
    parser.add_argument("--max-num-seqs", type=int, default=1024)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument(
        "--custom-histogram-buckets",
        default=None,
        metavar="JSON",
        help="bucket bounds per histogram, e.g. '{\"time_to_first_token\": [0.1, 0.5, 1]}'",
    )
    parser.add_argument(
        "--model-profile",
        default=DEFAULT_PROFILE,
        help=f"the simulator's performance profile (default {DEFAULT_PROFILE})",
    )
    parser.add_argument(
        "--startup-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="model load time: /health answers 503 until it has passed",
    )
    parser.add_argument(
        "--stream-interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="streamed tokens are sent in one SSE event per this interval (first token at once)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long open requests may finish",
    )
    for flag in _IGNORED_WITH_VALUE:
        parser.add_argument(flag, dest=_dest(flag), default=None, help=argparse.SUPPRESS)
    for flag in _IGNORED_SWITCHES:
        parser.add_argument(flag, dest=_dest(flag), action="store_true", help=argparse.SUPPRESS)


def _dest(flag: str) -> str:
    return "ignored_" + flag.lstrip("-").replace("-", "_")


def config_from_args(args: argparse.Namespace, argv: list[str]) -> Any:
    from slotune.emulator.server import EmulatorConfig

    buckets = None
    if args.custom_histogram_buckets:
        try:
            buckets = json.loads(args.custom_histogram_buckets)
        except json.JSONDecodeError as error:
            raise ValueError(f"--custom-histogram-buckets is not JSON: {error}") from None
    ignored = [
        flag
        for flag in (*_IGNORED_WITH_VALUE, *_IGNORED_SWITCHES)
        if getattr(args, _dest(flag)) not in (None, False)
    ]
    return EmulatorConfig(
        model=args.model,
        served_model_names=tuple(args.served_model_name),
        model_profile=args.model_profile,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        custom_histogram_buckets=buckets,
        startup_delay_s=args.startup_delay,
        stream_interval_s=args.stream_interval,
        drain_timeout_s=args.drain_timeout,
        ignored_flags=tuple(ignored),
        argv=tuple(argv),
    )


def cmd_emulate(args: argparse.Namespace) -> int:
    from slotune.cli import CliError
    from slotune.emulator.server import serve

    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            raise CliError(f"--host={args.host}: the emulator listens on loopback only")
    except ValueError:
        raise CliError(f"--host={args.host}: not an IP address") from None
    try:
        config = config_from_args(args, sys.argv[1:])
    except (ValueError, KeyError) as error:
        raise CliError(str(error).strip("'\"")) from None
    try:
        asyncio.run(serve(config, args.host, args.port))
    except (ValueError, KeyError) as error:  # the engine refused its flags
        raise CliError(str(error).strip("'\"")) from None
    except OSError as error:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    return 0


def register(commands: Any) -> None:
    emulate = commands.add_parser(
        "emulate",
        help="run an emulated vLLM server (OpenAI API, /metrics) on loopback",
        description=__doc__,
        allow_abbrev=False,
    )
    add_arguments(emulate)
    emulate.set_defaults(handler=cmd_emulate)
