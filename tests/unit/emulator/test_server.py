"""The emulator's HTTP API, in process: vLLM's endpoints, OpenAI shapes, errors, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from slotune.emulator.cli import add_arguments, config_from_args
from slotune.emulator.server import EmulatorConfig, EmulatorServer

MODEL = "llama-test"


def run(
    check: Callable[[TestClient[Any, Any], EmulatorServer], Awaitable[None]], **config: Any
) -> None:
    async def main() -> None:
        server = EmulatorServer(
            EmulatorConfig(model="meta-llama/x", served_model_names=(MODEL,), **config)
        )
        async with TestClient(TestServer(server.app)) as client:
            await check(client, server)
        server.driver.close()

    asyncio.run(main())


def test_health_is_503_until_the_model_has_loaded() -> None:
    async def check(client: TestClient[Any, Any], server: EmulatorServer) -> None:
        assert (await client.get("/health")).status == 503
        resp = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
        assert resp.status == 503
        await asyncio.sleep(0.35)
        assert (await client.get("/health")).status == 200

    run(check, startup_delay_s=0.3)


def test_models_version_and_emulator_config() -> None:
    async def check(client: TestClient[Any, Any], server: EmulatorServer) -> None:
        models = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == [MODEL]
        assert (await (await client.get("/version")).json())["version"]
        described = await (await client.get("/emulator")).json()
        assert described["config"]["max_num_seqs"] == 24

    run(check, max_num_seqs=24)


def test_completion_generates_max_tokens_and_reports_usage() -> None:
    async def check(client: TestClient[Any, Any], server: EmulatorServer) -> None:
        resp = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x" * 400, "max_tokens": 20}
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert body["object"] == "text_completion"
        assert body["usage"] == {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        assert body["choices"][0]["finish_reason"] == "length"
        assert len(body["choices"][0]["text"].split()) == 20

    run(check)


def test_chat_stream_is_server_sent_events_with_usage() -> None:
    async def check(client: TestClient[Any, Any], server: EmulatorServer) -> None:
        resp = await client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 60,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers={"x-slotune-prompt-tokens": "300"},
        )
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in (await resp.text()).split("\n\n") if line]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"])
        assert len(text.split()) == 60
        assert chunks[-1]["usage"]["prompt_tokens"] == 300
        # Coalesced: far fewer events than tokens.
        assert len(chunks) < 30

    run(check)


def test_errors_look_like_vllm() -> None:
    async def check(client: TestClient[Any, Any], server: EmulatorServer) -> None:
        resp = await client.post("/v1/completions", json={"model": "other", "prompt": "x"})
        assert resp.status == 404
        assert "does not exist" in (await resp.json())["error"]["message"]
        resp = await client.post(
            "/v1/completions", json={"model": MODEL, "max_tokens": 0, "prompt": "x"}
        )
        assert resp.status == 400
        resp = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x" * 8000, "max_tokens": 10}
        )
        assert resp.status == 400
        assert "maximum context length" in (await resp.json())["error"]["message"]

    run(check, max_model_len=1024)


def test_metrics_count_what_was_served() -> None:
    async def check(client: TestClient[Any, Any], server: EmulatorServer) -> None:
        await asyncio.gather(
            *(
                client.post(
                    "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5}
                )
                for _ in range(3)
            )
        )
        text = await (await client.get("/metrics")).text()
        assert (
            f'vllm:request_success_total{{model_name="{MODEL}",engine="0",finished_reason="length"}} 3.0'
            in text
        )
        assert f'vllm:generation_tokens_total{{model_name="{MODEL}",engine="0"}} 15.0' in text
        assert 'vllm:time_to_first_token_seconds_count{model_name="' in text

    run(check)


def test_latency_grows_with_load() -> None:
    """Continuous batching bounded by max-num-seqs: a burst beyond it queues."""

    async def check(client: TestClient[Any, Any], server: EmulatorServer) -> None:
        async def one() -> None:
            resp = await client.post(
                "/v1/completions",
                json={"model": MODEL, "prompt": "x", "max_tokens": 30},
                headers={"x-slotune-prompt-tokens": "2000"},
            )
            assert resp.status == 200

        await asyncio.gather(*(one() for _ in range(8)))
        ttft = server.metrics.ttft.snapshot()
        assert ttft.count == 8
        # Two at a time: the last pair waited for three pairs of 30 decode steps.
        assert server.metrics.ttft.quantile(1.0) > 3 * server.metrics.ttft.quantile(0.1)

    run(check, max_num_seqs=2)


def test_cli_flags_map_to_the_config_and_unknown_flags_are_refused() -> None:
    import argparse

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(parser)
    argv = [
        "meta-llama/x",
        "--served-model-name=a",
        "--host=127.0.0.1",
        "--port=8000",
        "--max-num-seqs=96",
        "--max-num-batched-tokens=4096",
        "--tensor-parallel-size=1",
        "--max-model-len=8192",
        "--enable-prefix-caching",
    ]
    config = config_from_args(parser.parse_args(argv), argv)
    assert (config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len) == (
        96,
        4096,
        8192,
    )
    assert config.ignored_flags == ("--tensor-parallel-size", "--enable-prefix-caching")
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-num-seq=4"])
