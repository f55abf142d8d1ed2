"""Assemble the service from settings: store, secret, galleries, analyzer."""

from __future__ import annotations

import logging

from index import Gallery, IndexConfig
from service.config import Settings
from service.engine import FaceService
from service.gallery_restore import remove_orphan_snapshots, restore
from service.pipeline.analyzer import FaceAnalyzer
from service.secrets_file import load_or_create_secret
from service.store import Store

log = logging.getLogger(__name__)


def build_service(settings: Settings, *, analyzer: FaceAnalyzer | None = None) -> FaceService:
    """Open (or create) the data directory and return a ready FaceService.

    Each collection's gallery is restored from its snapshot plus the store's changes since,
    or rebuilt from the store when the snapshot is missing or unusable. Collections
    enrolled with another model than ``analyzer``'s are kept but answer ModelMismatch.
    """
    if analyzer is None:
        # The real models are heavy to import and load; tests pass their own analyzer.
        from service.pipeline.dlib_analyzer import build_default_analyzer

        analyzer = build_default_analyzer(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_secret(settings)
    store = Store(settings.store_path)
    try:
        config = IndexConfig()
        rows = store.list_collections()
        galleries: dict[str, Gallery] = {}
        for row in rows:
            if row.model_id == analyzer.model_id:
                galleries[row.name] = restore(
                    store, row, analyzer.embedding_dim, settings.snapshot_dir, config
                )
        remove_orphan_snapshots(settings.snapshot_dir, rows)
        return FaceService(settings, analyzer, store, galleries, secret, index_config=config)
    except BaseException:
        store.close()
        raise
