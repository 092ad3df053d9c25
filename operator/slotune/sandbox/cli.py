"""`slotune sandbox up|status|down|load`: the local sandbox from the command line.

``up`` starts a supervisor process in the background (``--foreground`` keeps it attached) that
runs the control plane, Prometheus and the pod bridge -- and with ``--operator`` the operator --
and writes ``sandbox.json`` in the work dir; ``down`` stops the supervisor by its PID, which
stops everything it started by theirs. ``load`` drives a service's load balancer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_UP_TIMEOUT_S = 300.0  # a warm start takes ~15 s; a cold one builds first (its own progress)


def _work_dir(args: argparse.Namespace) -> Path:
    from slotune.sandbox.sandbox import default_work_dir

    return Path(args.work_dir) if args.work_dir else default_work_dir()


def _state(work: Path) -> dict[str, Any] | None:
    from slotune.sandbox.sandbox import STATE_FILE

    try:
        state: dict[str, Any] = json.loads((work / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def cmd_up(args: argparse.Namespace) -> int:
    from slotune.cli import CliError

    if not args.alert_speedup >= 1:
        raise CliError(f"--alert-speedup {args.alert_speedup:g}: use a number >= 1")
    work = _work_dir(args)
    state = _state(work)
    if state and _alive(int(state["pid"])):
        raise CliError(f"a sandbox already runs from {work} (pid {state['pid']}); `down` first")
    if args.foreground:
        return _supervise(args, work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "sandbox.json").unlink(missing_ok=True)
    argv = [sys.executable, "-m", "slotune.cli", *sys.argv[1:], "--foreground"]
    log_path = work / "sandbox.log"
    with log_path.open("wb") as log:
        # Its own session and no death signal: it outlives this command, until `down`.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    print(f"slotune sandbox: starting (pid {proc.pid}, log {log_path})", flush=True)
    shown = 0
    deadline = time.monotonic() + _UP_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if len(text) > shown:
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
        state = _state(work)
        if state and state.get("ready"):
            _print_usage(state)
            return 0
        if proc.poll() is not None:
            raise CliError(f"the sandbox exited (code {proc.returncode}); see {log_path}")
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    raise CliError(f"the sandbox was not up within {_UP_TIMEOUT_S:.0f}s; see {log_path}")


def _supervise(args: argparse.Namespace, work: Path) -> int:
    from slotune.sandbox.sandbox import STATE_FILE, Sandbox, SandboxConfig

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    config = SandboxConfig(
        gpu_nodes=args.gpu_nodes,
        gpus_per_node=args.gpus_per_node,
        ready_delay_s=args.ready_delay,
        scrape_interval_s=args.scrape_interval,
    )
    say = lambda message: print(f"slotune sandbox: {message}", flush=True)  # noqa: E731
    try:
        with Sandbox(work, config, progress=say) as sandbox:
            if args.operator:
                sandbox.install_crd()
                sandbox.start_operator(alert_speedup=args.alert_speedup)
                say("CRD installed, operator started")
            sandbox.write_state(ready=True, operator=bool(args.operator))
            say("up; `slotune sandbox down` stops it")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("slotune sandbox: stopping", flush=True)
    finally:
        (work / STATE_FILE).unlink(missing_ok=True)
    print("slotune sandbox: stopped", flush=True)
    return 0


def _print_usage(state: dict[str, Any]) -> None:
    print(
        "\nThe sandbox is up (everything on 127.0.0.1):\n"
        f"  export KUBECONFIG={state['kubeconfig']}\n"
        f"  {state['kubectl']} get nodes; {state['kubectl']} get llms -w\n"
        f"  Prometheus: {state['prometheus']}\n"
        f"  load balancers per LLMService: {state['routes']}\n"
    )
    if not state.get("operator"):
        print(
            "  slotune crd | kubectl apply -f -\n"
            f"  slotune run --prometheus-url={state['prometheus']}\n"
        )
    print("  kubectl apply -f examples/demo-llama-3-8b-h100.yaml; slotune sandbox load chat\n")


def cmd_status(args: argparse.Namespace) -> int:
    work = _work_dir(args)
    state = _state(work)
    if not state or not _alive(int(state["pid"])):
        print(f"slotune sandbox: not running (work dir {work})")
        return 1
    print(f"slotune sandbox: up, supervisor pid {state['pid']}, work dir {work}")
    for name, pid in sorted(state.get("processes", {}).items()):
        print(f"  {name:<24} pid {pid:<8} {'running' if _alive(int(pid)) else 'GONE'}")
    print(f"  kubeconfig {state['kubeconfig']}\n  prometheus {state['prometheus']}")
    try:
        routes = json.loads(Path(state["routes"]).read_text())
    except (OSError, json.JSONDecodeError):
        routes = {}
    for service, route in sorted(routes.items()):
        print(f"  LLMService {service}: load balancer {route['url']}")
        for backend in route["backends"]:
            seqs = next(
                (a.split("=", 1)[1] for a in backend["args"] if a.startswith("--max-num-seqs=")),
                "?",
            )
            print(
                f"    pod {backend['pod']}: emulator pid {backend['pid']} at {backend['url']}, "
                f"{'Ready' if backend['ready'] else 'starting'}, max-num-seqs {seqs}, "
                f"{backend['outstanding']} in flight"
            )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    work = _work_dir(args)
    state = _state(work)
    if not state or not _alive(int(state["pid"])):
        print(f"slotune sandbox: not running (work dir {work})")
        return 0
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.3)
    if _alive(pid):
        # Its children die with it (PR_SET_PDEATHSIG).
        os.kill(pid, signal.SIGKILL)
    print("slotune sandbox: stopped")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    import asyncio

    from slotune.cli import CliError
    from slotune.sandbox.loadgen import LoadGenerator, Phase, Scenario, percentile, read_trace

    work = _work_dir(args)
    state = _state(work)
    if not state:
        raise CliError(f"no sandbox runs from {work}")
    routes = json.loads(Path(state["routes"]).read_text())
    route = routes.get(f"{args.namespace}/{args.service}")
    if not route:
        raise CliError(f"no load balancer for {args.namespace}/{args.service} (is a pod Running?)")
    if args.trace:
        arrivals = read_trace(Path(args.trace), speedup=args.speedup, limit=args.max_requests)
        duration = arrivals[-1].at_s if arrivals else 0.0
    else:
        phases = []
        for part in args.steps.split(","):
            seconds, rate = part.split(":")
            phases.append(Phase(float(seconds), float(rate)))
        scenario = Scenario(tuple(phases))
        arrivals = scenario.arrivals(args.seed)
        duration = scenario.duration_s
    model = args.model
    if model is None:
        import urllib.request

        with urllib.request.urlopen(route["url"] + "/v1/models", timeout=10) as response:
            model = json.load(response)["data"][0]["id"]
    print(f"slotune sandbox load: {len(arrivals)} requests over {duration:.0f}s to {route['url']}")
    run = asyncio.run(
        LoadGenerator(route["url"], str(model)).run(
            arrivals, max_requests=args.max_requests, max_duration_s=min(duration + 60, 3600)
        )
    )
    ok = [r for r in run.results if r.ok]
    ttft = percentile([r.ttft_s for r in ok if r.ttft_s is not None], 95)
    tpot = percentile([r.tpot_s for r in ok if r.tpot_s is not None], 95)
    print(
        f"sent {len(run.results)}, ok {len(ok)}, dropped {run.dropped}; client p95 TTFT "
        f"{'-' if ttft is None else f'{ttft * 1000:.0f} ms'}, p95 TPOT "
        f"{'-' if tpot is None else f'{tpot * 1000:.1f} ms'}"
    )
    return 0


def register(commands: Any) -> None:
    sandbox = commands.add_parser(
        "sandbox", help="a local cluster with fake GPUs, Prometheus and emulated model servers"
    )
    sandbox.add_argument("--work-dir", help="default: ~/.cache/slotune/sandbox")
    actions = sandbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start it (in the background)")
    up.add_argument("--gpu-nodes", type=int, default=2)
    up.add_argument("--gpus-per-node", type=int, default=4)
    up.add_argument("--ready-delay", type=float, default=10.0, help="model load time, seconds")
    up.add_argument("--scrape-interval", type=float, default=5.0, help="Prometheus, seconds")
    up.add_argument("--operator", action="store_true", help="also install the CRD and run slotune")
    up.add_argument(
        "--alert-speedup",
        type=float,
        default=1.0,
        metavar="N",
        help="with --operator: SLO alert windows and `for` N times shorter, so a burn pages "
        "within minutes (60 wants --scrape-interval 1 or 2); default 1, the real windows",
    )
    up.add_argument("--foreground", action="store_true", help="stay attached until Ctrl-C")
    up.set_defaults(handler=cmd_up)
    actions.add_parser("status", help="what runs, where").set_defaults(handler=cmd_status)
    actions.add_parser("down", help="stop everything").set_defaults(handler=cmd_down)
    load = actions.add_parser("load", help="send load to an LLMService's load balancer")
    load.add_argument("service", help="LLMService name")
    load.add_argument("-n", "--namespace", default="default")
    load.add_argument(
        "--steps", default="60:4", help="SECONDS:RATE[,SECONDS:RATE...] (Poisson, default 60:4)"
    )
    load.add_argument("--trace", help="a *_norm.csv trace (arrival_s,input_tokens,output_tokens)")
    load.add_argument("--speedup", type=float, default=1.0, help="compress the trace's time")
    load.add_argument("--max-requests", type=int, default=5000)
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--model", help="default: the first of /v1/models")
    load.set_defaults(handler=cmd_load)
