"""Assemble and run the service, whatever the transport in front of it.

* ``build_service``: the engine from settings (store, vector indexes, secret, analyzer).
* ``build_served_service``: that engine as a server runs it (stages timed, calls audited).
* ``ServiceHost``: start-up and shutdown: the engine loads in the background (a model pack
  takes seconds) while the transport already answers "not ready"; the host owns the
  audit log and the metrics endpoint, and closes engine, endpoint and log in that order.
  ``service.transport.server`` runs one behind gRPC; another transport would reuse it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from index import IndexConfig
from service.config import Settings
from service.crypto.data_keys import load_keyring
from service.crypto.secrets_file import load_or_create_secret
from service.crypto.template_crypto import TemplateCipher
from service.engine.face_service import FaceService
from service.errors import ServiceNotReady
from service.maintenance.transform_rotation import finish_interrupted_reissues
from service.observability.audit import AuditLog, open_audit_log
from service.observability.audited_service import AuditedService
from service.observability.metrics import ServiceMetrics, parse_listen
from service.pipeline.analyzer import FaceAnalyzer
from service.pipeline.face_gate import LivenessCheck
from service.pipeline.timing import NO_TIMING, StageTimer
from service.ports import FaceServicePort
from service.store.sqlite import SqliteStore
from service.vector_index.local import LocalIndexes

log = logging.getLogger(__name__)

Loader = Callable[[], FaceServicePort]


def build_service(
    settings: Settings,
    *,
    analyzer: FaceAnalyzer | None = None,
    timer: StageTimer = NO_TIMING,
) -> FaceService:
    """Open (or create) the data directory and return a ready FaceService.

    Each collection's gallery is restored from its snapshot plus the store's changes since,
    or rebuilt from the store when the snapshot is missing or unusable. Collections
    enrolled with another model than ``analyzer``'s are kept but answer ModelMismatch.
    """
    if analyzer is None:
        # The real models are heavy to import and load; tests pass their own analyzer.
        # settings.model_pack selects the dlib default or a bring-your-own pack.
        from service.pipeline.factory import build_analyzer

        analyzer = build_analyzer(settings, timer=timer)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_secret(settings)
    keyring = load_keyring(settings)
    store = SqliteStore(settings.store_path, cipher=TemplateCipher(keyring))
    log.info("templates and snapshots are sealed with AES-256-GCM: %s", keyring.describe())
    indexes: LocalIndexes | None = None
    try:
        finish_interrupted_reissues(store, settings)
        indexes = LocalIndexes(
            store,
            keyring,
            dim=analyzer.embedding_dim,
            snapshot_dir=settings.snapshot_dir,
            config=IndexConfig(),
            snapshot_every_s=settings.snapshot_every_s,
        )
        indexes.remove_orphans(store.list_collections())
        # Each collection's index is loaded by the engine (it knows which it can serve).
        service = FaceService(
            settings,
            analyzer,
            store,
            indexes,
            secret,
            timer=timer,
            liveness=build_liveness(settings),
        )
        unreadable = store.unreadable_templates()
        if unreadable:
            log.error(
                "%d stored templates failed to decrypt (altered or swapped rows) and are not"
                " matched against: face ids %s",
                len(unreadable),
                ", ".join(str(f) for f in sorted(unreadable)[:20]),
            )
        return service
    except BaseException:
        if indexes is not None:
            indexes.close()
        store.close()
        raise


def build_liveness(settings: Settings) -> LivenessCheck | None:
    """The ``[liveness]`` PAD models, or None when no model directory is configured. A
    configured directory whose files are missing or differ from their pinned sha256 stops
    the start (ModelPackError): a server must never seem to check liveness when it cannot."""
    cfg = settings.liveness
    if cfg.model_dir is None:
        return None
    from service.pipeline.liveness import (  # onnx imports: only when configured
        MINIFASNET_V1SE_SHA256,
        MINIFASNET_V2_SHA256,
        LivenessDetector,
        LivenessModel,
    )

    v2, v1se = LivenessModel.minifasnet_pair(cfg.model_dir)
    models = (
        dataclasses.replace(v2, sha256=cfg.v2_sha256 or MINIFASNET_V2_SHA256),
        dataclasses.replace(v1se, sha256=cfg.v1se_sha256 or MINIFASNET_V1SE_SHA256),
    )
    detector = LivenessDetector(models, threshold=cfg.threshold, threads=settings.model_threads)
    log.info("liveness: %s, threshold %.3f", ", ".join(detector.model_ids), detector.threshold)
    return detector


def build_served_service(
    settings: Settings,
    *,
    metrics: ServiceMetrics | None = None,
    analyzer: FaceAnalyzer | None = None,
    audit_log: AuditLog | None = None,
) -> AuditedService:
    """The engine as the server runs it: stages timed by ``metrics``, every call audited.

    ``audit_log`` is the server's (shared with the auth interceptor, which records refused
    calls); without one the ``[audit]`` log of ``settings`` is opened here. The service
    closes it either way.
    """
    given = audit_log is not None
    if audit_log is None:
        audit_log = open_audit_log(settings)
    try:
        engine = build_service(
            settings, analyzer=analyzer, timer=metrics if metrics is not None else NO_TIMING
        )
    except BaseException:
        if audit_log is not None and not given:  # the server still records refusals in it
            audit_log.close()
        raise
    if audit_log is None:
        log.warning("the audit log is disabled ([audit] enabled = false)")
    if metrics is not None:
        metrics.set_model_pack(settings.model_pack, engine.model_id)
    return AuditedService(engine, log=audit_log, sinks=(metrics,) if metrics is not None else ())


class EngineSlot:
    """Holds the engine once it is loaded; closes it exactly once, after the server stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._service: FaceServicePort | None = None
        self._error: BaseException | None = None
        self._closed = False
        self.settled = threading.Event()  # loaded or failed

    def get(self) -> FaceServicePort:
        with self._lock:
            if self._service is not None:
                return self._service
            if self._error is not None:
                raise ServiceNotReady(f"the engine failed to load: {self._error}")
            raise ServiceNotReady("the server is starting: models are still loading")

    def peek(self) -> FaceServicePort | None:
        """The engine if it is loaded, else None (for metrics scrapes)."""
        with self._lock:
            return self._service

    def load(self, loader: Loader, on_ready: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            service = loader()
        except BaseException as exc:
            log.exception("facegate engine failed to load")
            with self._lock:
                self._error = exc
            self.settled.set()
            return
        with self._lock:
            late = self._closed
            if not late:
                self._service = service
        if late:  # the server stopped while we were loading
            service.close()
        else:
            log.info("facegate engine ready in %.1fs", time.monotonic() - started)
            on_ready()
        self.settled.set()

    @property
    def error(self) -> BaseException | None:
        with self._lock:
            return self._error

    def close(self) -> None:
        with self._lock:
            service, self._service, self._closed = self._service, None, True
        if service is not None:
            service.close()


class ServiceHost:
    """One running service: the engine (``service`` ready-made, or what ``loader`` returns,
    by default ``build_served_service(settings)``), plus what the process owns around it.

    Unless ``[metrics] listen`` is empty there is a ``metrics`` registry (the transport
    reports its calls into it) and, after ``serve_metrics()``, its HTTP endpoint. With the
    default loader the host opens the ``[audit]`` log: the transport records the calls it
    refuses there (they never reach the engine), the engine records the rest. An engine
    passed ready-made (tests) is audited, if at all, by whoever built it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        service: FaceServicePort | None = None,
        loader: Loader | None = None,
    ) -> None:
        if service is not None and loader is not None:
            raise ValueError("pass either service or loader, not both")
        self.settings = settings
        self._slot = EngineSlot()
        listen = parse_listen(settings.metrics.listen)
        self.metrics = ServiceMetrics(engine=self._slot.peek) if listen else None
        self.audit_log: AuditLog | None = open_audit_log(settings) if service is None else None
        self.metrics_port: int | None = None
        if service is not None:
            ready = service
            loader = lambda: ready  # noqa: E731 - loads at once, in start()
        elif loader is None:
            loader = self._build_default
        self._loader: Loader | None = loader
        self._background = service is None
        self._start_lock = threading.Lock()

    def _build_default(self) -> FaceServicePort:
        return build_served_service(self.settings, metrics=self.metrics, audit_log=self.audit_log)

    def start(self, *, on_ready: Callable[[], None]) -> None:
        """Load the engine (in a background thread unless it was given ready-made) and call
        ``on_ready`` once it is. Only the first call does anything."""
        with self._start_lock:
            loader, self._loader = self._loader, None
        if loader is None:
            return
        if not self._background:
            self._slot.load(loader, on_ready)
            return
        threading.Thread(
            target=self._slot.load,
            args=(loader, on_ready),
            name="facegate-engine-loader",
            daemon=True,
        ).start()

    def serve_metrics(self) -> None:
        """Start the Prometheus endpoint (when configured); ``metrics_port`` is its port."""
        if self.metrics is None:
            return
        try:
            self.metrics_port = self.metrics.serve_http(self.settings.metrics.listen)
        except OSError as exc:
            # Payments matter more than their metrics: serve on, and say so loudly.
            log.error(
                "metrics endpoint disabled: cannot listen on %s: %s",
                self.settings.metrics.listen,
                exc,
            )

    def engine(self) -> FaceServicePort:
        """The engine, or ServiceNotReady while it loads (or after it failed to)."""
        return self._slot.get()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the engine is loaded; False on timeout or if loading failed."""
        self._slot.settled.wait(timeout)
        try:
            self._slot.get()
        except ServiceNotReady:
            return False
        return True

    @property
    def load_error(self) -> BaseException | None:
        return self._slot.error

    def close(self) -> None:
        """Close the engine, then the metrics endpoint, then the audit log (last: the
        engine may never have loaded, and the transport wrote refusals into it)."""
        try:
            self._slot.close()
        except Exception:
            log.exception("closing the facegate engine failed")
        finally:
            if self.metrics is not None:
                self.metrics.stop_http()
            if self.audit_log is not None:
                self.audit_log.close()
