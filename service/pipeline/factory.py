"""The one place that turns settings into a FaceAnalyzer.

``model_pack = "dlib-default"`` (the default) is the converted dlib pack, prepared on first
use. Anything else is a bring-your-own pack: a pack name (a directory under the packs
directory), or a path to a pack directory or to its ``manifest.json``; its files are
verified against their sha256 before any model is loaded.
"""

from __future__ import annotations

from service.config import Settings
from service.models.pack import DEFAULT_PACK
from service.pipeline.analyzer import FaceAnalyzer
from service.pipeline.timing import NO_TIMING, StageTimer


def build_analyzer(settings: Settings, *, timer: StageTimer = NO_TIMING) -> FaceAnalyzer:
    if settings.model_pack == DEFAULT_PACK:
        from service.pipeline.dlib_analyzer import build_default_analyzer

        return build_default_analyzer(settings, timer=timer)
    from service.models.byo_pack import load_byo_pack
    from service.pipeline.byo_analyzer import ByoAnalyzer

    pack = load_byo_pack(settings.model_pack, settings.packs_dir)
    return ByoAnalyzer.from_pack(pack, threads=settings.model_threads, timer=timer)
