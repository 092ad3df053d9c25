"""The hindsight oracle, the comparison report and the `slotune sim` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slotune.api.spec import LLMServiceSpec
from slotune.cli import main
from slotune.policy.types import PolicySpec, Setting
from slotune.sim.cluster import ClusterConfig
from slotune.sim.oracle import _fewest, default_settings, fluid_replicas
from slotune.sim.perf import PerformanceModel
from slotune.sim.profiles import get_profile
from slotune.sim.report import Scenario, format_table, run_comparison, summaries, to_json
from slotune.sim.traces import TokenSampler, load_trace, step_trace

PROFILE = get_profile("llama-3-8b-h100")
SPEC = PolicySpec.from_spec(
    LLMServiceSpec.model_validate(
        {
            "model": {"name": "m"},
            "slo": {"ttft": {"target": "500ms"}, "itl": {"target": "25ms"}},
            "scaling": {"minReplicas": 1, "maxReplicas": 12},
        }
    )
)


def test_fewest_finds_the_threshold_from_any_guess() -> None:
    for threshold in range(1, 13):
        for guess in range(1, 13):
            calls: list[int] = []

            def meets(r: int, threshold: int = threshold, calls: list[int] = calls) -> bool:
                calls.append(r)
                return r >= threshold

            assert _fewest(meets, 1, 12, guess) == threshold
            assert len(calls) <= 2 + abs(guess - threshold)
    assert _fewest(lambda r: False, 1, 12, 5) is None
    assert _fewest(lambda r: True, 3, 2, 1) is None


def test_default_settings_start_with_the_initial_one() -> None:
    settings = default_settings(SPEC, Setting(1, 128, 8192))
    assert settings[0] == (128, 8192)
    low = SPEC.max_batched_tokens_bounds[0]
    assert set(settings) == {
        (seqs, max(tokens, seqs)) for seqs in (64, 128, 256) for tokens in (8192, low, 2 * low)
    }


def test_fluid_bound_grows_with_load() -> None:
    perf = PerformanceModel(PROFILE)
    light = step_trace(2.0, 2.0, 0.0, 300.0, seed=1).requests()
    heavy = step_trace(20.0, 20.0, 0.0, 300.0, seed=1).requests()
    kw = {"max_num_seqs": 128, "max_batched_tokens": 8192, "kv_tokens": 400_000}
    a = fluid_replicas(perf, light, 300.0, SPEC, **kw)  # type: ignore[arg-type]
    b = fluid_replicas(perf, heavy, 300.0, SPEC, **kw)  # type: ignore[arg-type]
    assert 0 < a < b and b == pytest.approx(10 * a, rel=0.3)


@pytest.fixture(scope="module")
def comparison() -> object:
    # Conversation-like requests stepping from one replica's worth to three.
    tokens = TokenSampler.from_trace(load_trace("azure-conv"))
    trace = step_trace(4.0, 16.0, 300.0, 900.0, seed=4, tokens=tokens)
    scenario = Scenario(
        trace=trace,
        profile=PROFILE,
        spec=SPEC,
        initial=Setting(0, 128, 8192),
        cluster=ClusterConfig(cold_start_s=120.0),
        seed=4,
    )
    return run_comparison(scenario, ["hpa", "kpa", "saturation", "static", "oracle"])


def test_the_oracle_is_a_floor_for_every_policy_that_attains_as_much(comparison: object) -> None:
    rows = summaries(comparison)  # type: ignore[arg-type]
    oracle = rows["oracle"]
    assert oracle["window_attainment"] == 1.0
    assert oracle["fluid_gpu_hours"] <= oracle["gpu_hours"]
    comparable = [
        name
        for name, row in rows.items()
        if name != "oracle" and row["window_attainment"] >= oracle["window_attainment"]
    ]
    assert comparable, rows  # static, provisioned for the peak, at least
    for name in comparable:
        assert rows[name]["gpu_hours"] >= oracle["gpu_hours"] - 1e-9, (name, rows)
        assert rows[name]["ratio_to_oracle"] >= 1.0
    # Static starts at (and holds) the oracle's peak need at the initial setting.
    peak = max(w.initial_needs or 0 for w in comparison.oracle.windows)  # type: ignore[attr-defined]
    assert rows["static"]["max_replicas"] == peak and rows["static"]["scale_actions"] == 0


def test_the_report_states_the_scenario(comparison: object) -> None:
    table = format_table(comparison)  # type: ignore[arg-type]
    assert "stepping to 16 req/s at 300 s" in table and "x oracle" in table
    document = to_json(comparison)  # type: ignore[arg-type]
    assert set(document["policies"]) == {"hpa", "kpa", "saturation", "static", "oracle"}
    for row in document["policies"].values():
        for key in (
            "gpu_hours", "window_attainment", "request_goodput", "ttft_p95", "itl_p95",
            "e2e_p95", "scale_actions", "restarts", "ratio_to_oracle",
        ):  # fmt: skip
            assert key in row
    assert document["trace"]["scaling"] and document["setup"]["initial"]["replicas_from"]
    assert len(document["timelines"]["hpa"]["t_s"]) == 30
    assert len(document["oracle"]["windows"]) == 3


def run_cli(tmp_path: Path, tag: str, *extra: str) -> tuple[int, bytes]:
    out = tmp_path / f"{tag}.json"
    code = main(
        [
            "sim",
            "--trace",
            "poisson:rate=6,duration=360",
            "--slo-ttft",
            "1s",
            "--slo-itl",
            "50ms",
            "--policies",
            "hpa,kpa,saturation,static,oracle",
            "--seed",
            "7",
            "--json",
            str(out),
            "--no-progress",
            *extra,
        ]
    )
    return code, out.read_bytes()


def test_same_seed_same_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code1, first = run_cli(tmp_path, "a", "--plot", str(tmp_path / "a.png"))
    code2, second = run_cli(tmp_path, "b")
    assert code1 == code2 == 0
    assert first == second
    document = json.loads(first)
    assert document["seed"] == 7 and document["slo"]["itl_target_s"] == 0.05
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "windows ok" in out and "oracle" in out


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--trace", "azure-conv", "--policies", "hpa,nope"]) == 2
    assert "unknown nope" in capsys.readouterr().err
    assert main(["sim", "--trace", "azure-conv", "--model", "gpt-9"]) == 2
    assert "--model 'gpt-9'" in capsys.readouterr().err
    assert main(["sim", "--trace", "no-such.csv"]) == 2
    assert "not a built-in trace" in capsys.readouterr().err
