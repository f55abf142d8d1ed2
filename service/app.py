"""Assemble the service from settings: store, secret, galleries, analyzer; and the engine
as the server runs it (timed by the server's metrics, every call audited)."""

from __future__ import annotations

import dataclasses
import logging

from index import Gallery, IndexConfig
from service.config import Settings
from service.crypto.data_keys import load_keyring
from service.crypto.secrets_file import load_or_create_secret
from service.crypto.template_crypto import TemplateCipher
from service.engine.face_service import FaceService
from service.maintenance.transform_rotation import finish_interrupted_reissues
from service.observability.audit import AuditLog, open_audit_log
from service.observability.audited_service import AuditedService
from service.observability.metrics import ServiceMetrics
from service.pipeline.analyzer import FaceAnalyzer
from service.pipeline.face_gate import LivenessCheck
from service.pipeline.timing import NO_TIMING, StageTimer
from service.store.sqlite import SqliteStore
from service.vector_index.restore import remove_orphan_snapshots, restore

log = logging.getLogger(__name__)


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
    try:
        config = IndexConfig()
        finish_interrupted_reissues(store, settings)
        rows = store.list_collections()
        galleries: dict[str, Gallery] = {}
        for row in rows:
            if row.model_id == analyzer.model_id:
                galleries[row.name] = restore(
                    store, row, analyzer.embedding_dim, settings.snapshot_dir, config
                )
        remove_orphan_snapshots(settings.snapshot_dir, rows)
        unreadable = store.unreadable_templates()
        if unreadable:
            log.error(
                "%d stored templates failed to decrypt (altered or swapped rows) and are not"
                " matched against: face ids %s",
                len(unreadable),
                ", ".join(str(f) for f in sorted(unreadable)[:20]),
            )
        return FaceService(
            settings,
            analyzer,
            store,
            galleries,
            secret,
            index_config=config,
            timer=timer,
            liveness=build_liveness(settings),
        )
    except BaseException:
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
