"""Prometheus metrics for one server: RPCs, pipeline stages, decisions, galleries, batches.

Everything lives in a per-server ``CollectorRegistry`` (never the global one), so tests and
several servers in one process do not collide. The pieces:

* ``observe_rpc``, fed by the transport (``service.transport.rpc_metrics``, the one place
  gRPC calls are counted and timed, including calls other interceptors refuse);
* a ``StageTimer`` (``service.pipeline.timing``) the engine and pipeline time stages with;
* an ``AuditSink`` (``service.observability.audit``) that counts decisions and refusal reasons;
* a scrape-time collector for gallery sizes, readiness and the loaded model pack;
* the HTTP endpoint on its own port (``[metrics] listen``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from service.errors import InvalidArgument
from service.observability.audit import OK, AuditEvent
from service.pipeline.timing import STAGES
from service.ports import FaceServicePort

log = logging.getLogger(__name__)

# Face pipeline stages run from ~0.1 ms (search on a small gallery) to seconds (a large
# photo's detection on a slow CPU).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DECISION_ACTIONS = ("identify", "verify")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Scraped(Collector):
    """Values read at scrape time from the engine (when it is loaded)."""

    def __init__(self, engine: Callable[[], FaceServicePort | None], metrics: ServiceMetrics):
        self._engine = engine
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        svc = self._engine()
        ready = GaugeMetricFamily("facegate_engine_ready", "1 once the models are loaded")
        ready.add_metric([], 1.0 if svc is not None else 0.0)
        yield ready
        pack = InfoMetricFamily("facegate_model_pack", "The model pack the engine runs")
        if self._metrics.model_pack is not None:
            name, model_id = self._metrics.model_pack
            pack.add_metric([], {"pack": name, "model_id": model_id})
        yield pack
        users = GaugeMetricFamily(
            "facegate_gallery_users", "Enrolled users per collection", labels=["collection"]
        )
        faces = GaugeMetricFamily(
            "facegate_gallery_faces",
            "Enrolled face templates per collection",
            labels=["collection"],
        )
        if svc is not None:
            try:
                for info in svc.list_collections():
                    users.add_metric([info.name], float(info.user_count))
                    faces.add_metric([info.name], float(info.face_count))
            except Exception:  # a scrape must not fail because the engine is closing
                log.debug("gallery sizes unavailable at scrape", exc_info=True)
        yield users
        yield faces


class ServiceMetrics:
    """All metrics of one server, and the hooks the server and engine report through."""

    def __init__(self, *, engine: Callable[[], FaceServicePort | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        self.model_pack: tuple[str, str] | None = None
        r = self.registry
        self.rpc_requests = Counter(
            "facegate_grpc_requests",
            "RPCs handled, by service, method and status code",
            ["service", "method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "facegate_grpc_request_duration_seconds",
            "RPC handling time, by service, method and status code",
            ["service", "method", "code"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "facegate_stage_duration_seconds",
            "Time per pipeline stage run (embed and search: per batched run)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "facegate_batch_size",
            "Items per micro-batched run",
            ["queue"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "facegate_decisions",
            "Identify and Verify answers, by decision",
            ["action", "decision"],
            registry=r,
        )
        self.refusals = Counter(
            "facegate_refusals",
            "Audited calls refused or failed, by action and reason code",
            ["action", "reason"],
            registry=r,
        )
        Info("facegate_build", "facegate build", registry=r).info(
            {
                "version": _version("facegate"),
                "python": platform.python_version(),
                "grpcio": _version("grpcio"),
                "onnxruntime": _version("onnxruntime"),
            }
        )
        ProcessCollector(registry=r)
        r.register(_Scraped(engine, self))
        self._stage_children = {name: self.stage_seconds.labels(name) for name in STAGES}
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    # ------------------------------------------------------- StageTimer

    def stage(self, name: str) -> AbstractContextManager[object]:
        child = self._stage_children.get(name)
        if child is None:  # a stage added later: its label appears on first use
            child = self._stage_children[name] = self.stage_seconds.labels(name)
        return child.time()

    def batch(self, queue: str, size: int) -> None:
        self.batch_size.labels(queue).observe(size)

    # -------------------------------------------------------- AuditSink

    def write(self, event: AuditEvent) -> None:
        if event.outcome == OK:
            if event.decision is not None and event.action in DECISION_ACTIONS:
                self.decisions.labels(event.action, event.decision).inc()
        else:
            self.refusals.labels(event.action, event.reason or "UNKNOWN").inc()

    def set_model_pack(self, pack: str, model_id: str) -> None:
        self.model_pack = (pack, model_id)

    # ------------------------------------------------------------- RPCs

    def observe_rpc(self, full_method: str, code: str, seconds: float) -> None:
        """One finished call: ``/package.Service/Method``, its status code name, duration."""
        service, _, method = full_method.lstrip("/").rpartition("/")
        labels = (service, method, code)
        self.rpc_requests.labels(*labels).inc()
        self.rpc_seconds.labels(*labels).observe(seconds)

    # ------------------------------------------------------------- HTTP

    def serve_http(self, listen: str) -> int | None:
        """Start the endpoint on ``listen`` (host:port); its bound port, None if disabled."""
        address = parse_listen(listen)
        if address is None:
            return None
        host, port = address
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(5.0)
            self._http_thread = None


def parse_listen(listen: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` too) -> (host, port); "" or "0" -> None (disabled)."""
    text = listen.strip()
    if text in ("", "0"):
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host or int(port_text) > 65535:
        raise InvalidArgument(
            f"metrics listen address {listen!r} is not host:port (or empty to disable)",
            metadata={"field": "metrics.listen"},
        )
    return host.strip("[]"), int(port_text)
