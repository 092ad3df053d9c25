"""Reads the batched queries from Prometheus and caches them for every LLMService.

Each (Prometheus URL, engine, window) is queried at most once per `refresh_s`, whichever
LLMService asks first; the others read the cache. A failed refresh is remembered as an error
(never as empty data), so callers can say PrometheusError and hold.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from slotune.metrics.queries import QuerySet, query_set
from slotune.metrics.snapshot import ServiceKey, ServiceSeries, group_by_service
from slotune.render.engines import ADAPTERS


class PrometheusApi(Protocol):
    def custom_query(self, query: str) -> Any: ...


def connect(url: str) -> PrometheusApi:
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    # No client-side retries: the next cycle is the retry. The library's default (3 with
    # backoff) held every LLMService's reconcile for ~6 s per refresh while Prometheus was down.
    api: PrometheusApi = PrometheusConnect(
        url=url, disable_ssl=False, timeout=5, retry=Retry(total=0)
    )
    return api


@dataclass
class Reading:
    """One refresh of one query set: the series per service, or why there are none."""

    fetched_at: float
    series: dict[ServiceKey, ServiceSeries] = field(default_factory=dict)
    error: str | None = None
    queries: int = 0


class MetricsCollector:
    def __init__(
        self,
        refresh_s: float = 10.0,
        connect: Callable[[str], PrometheusApi] = connect,
        on_query_error: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.refresh_s = refresh_s
        self._connect = connect
        self._on_query_error = on_query_error
        self._clients: dict[str, PrometheusApi] = {}
        self._cache: dict[tuple[str, str, str], Reading] = {}
        self._lock = threading.Lock()
        self.total_queries = 0

    def read(self, url: str, engine: str, window: str, now_s: float) -> Reading:
        key = (url, engine, window)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now_s - cached.fetched_at < self.refresh_s:
                return cached
            reading = self._fetch(url, query_set(engine, ADAPTERS[engine].metrics, window), now_s)
            self._cache[key] = reading
            return reading

    def _fetch(self, url: str, queries: QuerySet, now_s: float) -> Reading:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = self._connect(url)
        results: dict[str, Any] = {}
        name = ""
        try:
            for name, promql in queries.queries.items():
                self.total_queries += 1
                results[name] = client.custom_query(promql)
        except Exception as error:  # the client raises requests', urllib3's and its own errors
            self._on_query_error(name)
            return Reading(now_s, error=describe_error(error, url))
        return Reading(now_s, group_by_service(results), queries=len(queries.queries))


def describe_error(error: Exception, url: str) -> str:
    """A stable one-line reason. Stable matters: it lands in a status condition, and a message
    with object addresses or timestamps in it would change, and be rewritten, every cycle."""
    import requests

    if isinstance(error, requests.ConnectionError):
        return f"cannot connect to Prometheus at {url}"
    if isinstance(error, requests.Timeout):
        return f"Prometheus at {url} did not answer in time"
    text = re.sub(r" at 0x[0-9a-f]+", "", str(error))
    return f"Prometheus at {url}: {type(error).__name__}: {text}"[:300]
