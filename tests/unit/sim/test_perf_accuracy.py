"""The performance model against every reference point of ../shared/perf/README.md.

Bar (issue 4): median absolute relative error <= 10 %, worst <= 25 %. The measured values are
read from the CSV files themselves (medians over repeated runs), never copied here. A second,
wider table -- every comparable row of the same files -- is printed for information and is
not gated: it shows where the model generalises and where it does not.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slotune.sim.perf import PerformanceModel, PerfProfile
from slotune.sim.profiles import (
    A100_SXM_80GB,
    H100_SXM_80GB,
    KERNELS_ONLY,
    LLAMA_2_7B,
    LLAMA_2_70B,
    LLAMA_3_8B,
    get_profile,
)

PERF_DIR = Path(__file__).parents[3].parent / "shared" / "perf"

MEDIAN_BOUND = 0.10
WORST_BOUND = 0.25


@dataclass(frozen=True)
class Comparison:
    reference: str
    profile: str
    point: str
    ours: float
    measured: float

    @property
    def error(self) -> float:
        return self.ours / self.measured - 1.0


def _perf_dir() -> Path:
    if not PERF_DIR.is_dir():
        pytest.fail(
            f"reference data missing: {PERF_DIR} (the repository expects ../shared/perf beside "
            "it, with the Vidur, Splitwise and SageServe CSV files)"
        )
    return PERF_DIR


def _rows(name: str) -> list[dict[str, str]]:
    with (_perf_dir() / name).open(newline="") as f:
        return list(csv.DictReader(f))


def _model(profile: str) -> PerformanceModel:
    return PerformanceModel(get_profile(profile))


# Key of a Splitwise/SageServe run: (hardware, tp, prompt, batch, output tokens).
RunKey = tuple[str, int, int, int, int]


def _runs(name: str, model: str, seconds_per_unit: float) -> dict[RunKey, tuple[float, float]]:
    """Median (prompt_time, token_time) in seconds per run configuration."""
    grouped: dict[RunKey, list[dict[str, str]]] = defaultdict(list)
    for r in _rows(name):
        if r["model"] != model:
            continue
        key = (
            r["hardware"],
            int(r["tensor_parallel"]),
            int(r["prompt_size"]),
            int(r["batch_size"]),
            int(r["token_size"]),
        )
        grouped[key].append(r)
    return {
        key: (
            statistics.median(float(r["prompt_time"]) for r in rs) * seconds_per_unit,
            statistics.median(float(r["token_time"]) for r in rs) * seconds_per_unit,
        )
        for key, rs in grouped.items()
    }


def _vidur_linear() -> dict[tuple[str, str, int, int], float]:
    return {
        (r["device"], r["model"], int(r["tensor_parallel"]), int(r["num_tokens"])): float(
            r["linear_ops_ms_per_iteration"]
        )
        / 1e3
        for r in _rows("vidur_linear_ops_per_iteration.csv")
    }


def _decode_attention_fit() -> tuple[float, float]:
    """Least squares of Vidur's A100 decode attention per layer: seconds = a + b * KV bytes."""
    xs, ys = [], []
    kv_bytes_per_token = 2 * (8 // 2) * 128 * 2  # K and V, 4 KV heads per GPU at TP2, bf16
    for r in _rows("vidur_a100_attention_llama2-70b_tp2_extract.csv"):
        if r["is_prefill"] != "False":
            continue
        xs.append(int(r["batch_size"]) * int(r["kv_cache_size"]) * kv_bytes_per_token)
        ys.append(float(r["attn_ms_per_layer_median"]) / 1e3)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return my - slope * mx, slope


def _decode_context(batch: int, prompt: int, output: int) -> int:
    """Average KV held by a batch over a run: prompts plus half the output."""
    return batch * (prompt + output // 2)


VIDUR_MODELS = (
    ("h100", "Llama-2-7b-hf", "ref-vidur-llama-2-7b-h100"),
    ("a100", "Llama-2-7b-hf", "ref-vidur-llama-2-7b-a100"),
    ("a100", "Meta-Llama-3-8B", "ref-vidur-llama-3-8b-a100"),
)
SPLITWISE_PROFILES = {
    ("a100-80gb", tp): f"ref-splitwise-llama-2-70b-a100-tp{tp}" for tp in (2, 4, 8)
} | {("h100-80gb", tp): f"ref-splitwise-llama-2-70b-h100-tp{tp}" for tp in (2, 4, 8)}
SAGESERVE_PROFILES = {
    2: "ref-sageserve-llama-3.1-8b-a100-tp2",
    4: "ref-sageserve-llama-3.1-8b-a100-tp4",
}


def reference_points() -> Iterator[Comparison]:
    """Exactly the anchors the README lists."""
    linear = _vidur_linear()
    for device, model, profile in VIDUR_MODELS:
        pm = _model(profile)
        for n in (1, 64, 256, 1024, 4096):
            yield Comparison(
                "Vidur linear ops/iteration",
                profile,
                f"{n} tokens",
                pm.linear_layers_time(n),
                linear[(device, model, 1, n)],
            )
        slope_ours = (pm.linear_layers_time(4096) - pm.linear_layers_time(1024)) / 3072
        slope_measured = (
            linear[(device, model, 1, 4096)] - linear[(device, model, 1, 1024)]
        ) / 3072
        yield Comparison("Vidur prefill slope", profile, "per token", slope_ours, slope_measured)

    intercept, per_byte = _decode_attention_fit()
    pm = _model("ref-vidur-llama-2-70b-a100-tp2")
    kv_bytes_per_token = pm.kv_bytes_per_token // pm.profile.tensor_parallel
    layers = pm.profile.model.num_layers
    for gigabytes in (0.25, 1.0):
        tokens = int(gigabytes * 1e9 * layers / kv_bytes_per_token)
        yield Comparison(
            "Vidur decode attention/layer",
            pm.profile.name,
            f"{gigabytes} GB KV read",
            pm.decode_attention_time(64, tokens) / layers,
            intercept + per_byte * gigabytes * 1e9,
        )

    sage = _runs("sageserve_Llama-3.1-8B-tp-2.csv", "Llama-3.1-8B", 1.0)
    pm = _model(SAGESERVE_PROFILES[2])
    for batch in (1, 2, 4, 8, 16, 32):
        _, token_time = sage[("a100-80gb", 2, 512, batch, 128)]
        yield Comparison(
            "SageServe ITL",
            pm.profile.name,
            f"B={batch}",
            pm.decode_step_time(batch, _decode_context(batch, 512, 128)),
            token_time / 128,
        )
    for prompt in (4096, 8192):
        prompt_time, _ = sage[("a100-80gb", 2, prompt, 1, 128)]
        yield Comparison(
            "SageServe prefill",
            pm.profile.name,
            f"{prompt} tokens",
            pm.prefill_time(prompt),
            prompt_time,
        )

    split = _runs("splitwise_perf_model.csv", "llama2-70b", 1e-3)
    for hardware in ("a100-80gb", "h100-80gb"):
        pm = _model(SPLITWISE_PROFILES[(hardware, 2)])
        _, token_time = split[(hardware, 2, 512, 1, 128)]
        yield Comparison(
            "Splitwise token time",
            pm.profile.name,
            "B=1",
            pm.decode_step_time(1, _decode_context(1, 512, 128)),
            token_time,
        )
        prompt_time, _ = split[(hardware, 2, 2048, 1, 128)]
        yield Comparison(
            "Splitwise prompt time",
            pm.profile.name,
            "2048 tokens",
            pm.prefill_time(2048),
            prompt_time,
        )


def extended_points() -> Iterator[Comparison]:
    """Every comparable row of the same files (information only)."""
    linear = _vidur_linear()
    models = {
        "Llama-2-7b-hf": "llama-2-7b",
        "Meta-Llama-3-8B": "llama-3-8b",
        "Llama-2-70b-hf": "llama-2-70b",
    }
    archs = {"llama-2-7b": LLAMA_2_7B, "llama-3-8b": LLAMA_3_8B, "llama-2-70b": LLAMA_2_70B}
    gpus = {"a100": A100_SXM_80GB, "h100": H100_SXM_80GB}
    cache: dict[tuple[str, str, int], PerformanceModel] = {}
    for (device, model, tp, n), measured in sorted(linear.items()):
        key = (device, models[model], tp)
        if key not in cache:
            cache[key] = PerformanceModel(
                PerfProfile(
                    f"{device}-{models[model]}-tp{tp}",
                    archs[models[model]],
                    gpus[device],
                    KERNELS_ONLY,
                    tensor_parallel=tp,
                )
            )
        yield Comparison(
            f"Vidur linear {device} {models[model]} TP{tp}",
            cache[key].profile.name,
            f"{n} tokens",
            cache[key].linear_layers_time(n),
            measured,
        )

    def runs(
        source: str, table: dict[RunKey, tuple[float, float]], profile_of: Callable[[str, int], str]
    ) -> Iterator[Comparison]:
        for (hardware, tp, prompt, batch, output), (p_time, t_time) in sorted(table.items()):
            if batch > 32:  # both sources' batch-64 rows are internally inconsistent
                continue
            pm = _model(profile_of(hardware, tp))
            per_token = t_time if source == "Splitwise" else t_time / output
            yield Comparison(
                f"{source} TP{tp} decode",
                pm.profile.name,
                f"P={prompt} B={batch} T={output}",
                pm.decode_step_time(batch, _decode_context(batch, prompt, output)),
                per_token,
            )
            if batch == 1 or source == "Splitwise":
                ours = pm.iteration_time(
                    decode_seqs=0,
                    decode_context_tokens=0,
                    prefill_tokens=batch * prompt,
                    prefill_seqs=batch,
                    prefill_attention_pairs=batch * prompt * prompt / 2,
                    prefill_context_tokens=batch * prompt,
                )
                yield Comparison(
                    f"{source} TP{tp} prompt",
                    pm.profile.name,
                    f"P={prompt} B={batch}",
                    ours,
                    p_time,
                )

    split = {
        k: v
        for k, v in _runs("splitwise_perf_model.csv", "llama2-70b", 1e-3).items()
        if k[0] in ("a100-80gb", "h100-80gb")
    }
    yield from runs("Splitwise", split, lambda hw, tp: SPLITWISE_PROFILES[(hw, tp)])
    for tp in (2, 4):
        sage = _runs(f"sageserve_Llama-3.1-8B-tp-{tp}.csv", "Llama-3.1-8B", 1.0)
        yield from runs("SageServe", sage, lambda hw, tp: SAGESERVE_PROFILES[tp])


def _format(rows: list[Comparison]) -> str:
    lines = [
        f"{'reference':30} {'profile':38} {'point':14} {'ours':>10} {'measured':>10} {'error':>7}"
    ]
    for c in rows:
        lines.append(
            f"{c.reference:30} {c.profile:38} {c.point:14} {c.ours * 1e3:10.3f} "
            f"{c.measured * 1e3:10.3f} {c.error * 100:+6.1f}%"
        )
    errors = [abs(c.error) for c in rows]
    lines.append(
        f"(times in ms) points={len(rows)} median |error|={statistics.median(errors) * 100:.1f}% "
        f"worst={max(errors) * 100:.1f}%"
    )
    return "\n".join(lines)


def test_reference_points_meet_the_accuracy_bar() -> None:
    rows = list(reference_points())
    print("\n" + _format(rows))
    errors = [abs(c.error) for c in rows]
    worst = max(rows, key=lambda c: abs(c.error))
    assert len(rows) == 32  # 18 Vidur linear, 2 attention, 8 SageServe, 4 Splitwise
    assert statistics.median(errors) <= MEDIAN_BOUND, _format(rows)
    assert abs(worst.error) <= WORST_BOUND, f"worst point {worst}\n{_format(rows)}"


def test_extended_points_are_reported() -> None:
    """Not gated per point: prints a summary per group so regressions are visible."""
    groups: dict[str, list[float]] = defaultdict(list)
    for c in extended_points():
        groups[c.reference].append(abs(c.error))
    print()
    for name, errors in groups.items():
        print(
            f"{name:42} n={len(errors):4} median={statistics.median(errors) * 100:5.1f}% "
            f"worst={max(errors) * 100:5.1f}%"
        )
    # The groups the reference points come from must stay good as a whole.
    for name in (
        "Vidur linear h100 llama-2-7b TP1",
        "SageServe TP2 decode",
        "Splitwise TP2 decode",
    ):
        assert statistics.median(groups[name]) <= MEDIAN_BOUND, name
