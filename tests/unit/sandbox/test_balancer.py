"""The per-LLMService load balancer, in process, in front of two in-process emulators."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from slotune.emulator.server import EmulatorConfig, EmulatorServer
from slotune.sandbox.bridge import Backend, Balancer, Bridge
from slotune.sandbox.pods import PodView
from slotune.sandbox.processes import ManagedProcess

MODEL = "m"


def _pod(name: str) -> PodView:
    return PodView("ns", name, name, "svc", "Running", True, False, 0.0, (), (), "", {})


def test_least_outstanding_and_a_draining_replica_is_skipped(tmp_path: Path) -> None:
    async def main() -> None:
        servers = [
            EmulatorServer(EmulatorConfig(model=MODEL, served_model_names=(MODEL,)))
            for _ in range(2)
        ]
        started = [await _serve_app(s.app) for s in servers]
        bridge = Bridge(tmp_path / "k", tmp_path, ready_delay_s=0)
        bridge._session = aiohttp.ClientSession()
        balancer = Balancer("ns", "svc")
        for i, (_, port) in enumerate(started):
            name = f"pod-{i}"
            balancer.backends[name] = Backend(
                _pod(name), port, ManagedProcess(name, [], tmp_path / "x.log"), [], ready=True
            )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", bridge._proxy_handler(balancer))
        lb, lb_port = await _serve_app(app)
        url = f"http://127.0.0.1:{lb_port}/v1/completions"
        body = {"model": MODEL, "prompt": "x", "max_tokens": 40}
        async with aiohttp.ClientSession() as client:

            async def one() -> int:
                async with client.post(url, json=body) as resp:
                    await resp.read()
                    return resp.status

            assert await asyncio.gather(*(one() for _ in range(10))) == [200] * 10
            # Spread over both replicas.
            assert all(s.driver.submitted >= 3 for s in servers)
            # One replica starts draining (its pod is going): every request still succeeds.
            servers[0].draining = True
            before = servers[1].driver.submitted
            assert await asyncio.gather(*(one() for _ in range(6))) == [200] * 6
            assert servers[1].driver.submitted == before + 6
        await bridge._session.close()
        for runner, _ in started:
            await runner.cleanup()
        await lb.cleanup()
        for s in servers:
            s.driver.close()

    asyncio.run(main())


async def _serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, int(port)
