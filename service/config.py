"""One typed settings object, built once at the entry point and passed down.

Sources, later wins: defaults < TOML file (``--config`` / ``FACEGATE_CONFIG``) < ``FACEGATE_*``
environment variables < explicit keyword overrides (CLI flags, tests). No import-time globals.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import InvalidArgument


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facegate"


@dataclass(frozen=True, kw_only=True)
class DecodeLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 12_000


@dataclass(frozen=True, kw_only=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    data_dir: Path = field(default_factory=default_data_dir)
    # Where model packs live; default: <data_dir>/packs.
    model_dir: Path | None = None
    model_pack: str = "dlib-default"
    # Threads per ONNX session; the server runs several sessions' calls concurrently.
    model_threads: int = 1
    # Detector upsampling: -1 = automatic (once for frames whose shorter side is < 480 px,
    # never for larger ones), 0/1/2 = fixed. Each step finds 2× smaller faces at ~4× the cost.
    detector_upsample: int = -1
    # Photos with a longer side above this are shrunk for detection only; 0 = never.
    detect_max_side: int = 1280
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 64
    worker_threads: int = 16
    # Micro-batching: concurrent requests within this window share one embed/search run.
    batch_window_ms: float = 2.0
    max_batch: int = 32
    probe_token_ttl_s: float = 60.0
    default_hint_required_above: int = 0
    # Secret for keyed phone-number hashes and probe tokens; generated into data_dir when unset.
    secret_file: Path | None = None
    snapshot_every_s: float = 300.0
    decode: DecodeLimits = field(default_factory=DecodeLimits)

    @property
    def packs_dir(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.data_dir / "packs"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "facegate.sqlite3"

    @property
    def snapshot_dir(self) -> Path:
        return self.data_dir / "snapshots"


def _coerce(name: str, raw: Any, target: Any) -> Any:
    """Convert a TOML/env value to the type of the field's default."""
    try:
        if isinstance(target, bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if isinstance(target, int):
            return int(raw)
        if isinstance(target, float):
            return float(raw)
        if isinstance(target, Path) or name in ("model_dir", "secret_file"):
            return Path(str(raw)).expanduser()
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"setting {name!r}: cannot use {raw!r}: {exc}") from exc


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    env = os.environ if environ is None else environ
    base = Settings()
    values: dict[str, Any] = {}
    decode_values: dict[str, Any] = {}
    path = config_file or (Path(env["FACEGATE_CONFIG"]) if env.get("FACEGATE_CONFIG") else None)
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"config file {path}: {exc}") from exc
        decode_values.update(doc.pop("decode", {}) or {})
        values.update(doc)
    names = {f.name for f in dataclasses.fields(Settings)}
    for f in dataclasses.fields(Settings):
        key = "FACEGATE_" + f.name.upper()
        if key in env:
            values[f.name] = env[key]
    for f in dataclasses.fields(DecodeLimits):
        key = "FACEGATE_DECODE_" + f.name.upper()
        if key in env:
            decode_values[f.name] = env[key]
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - names
    if unknown:
        raise InvalidArgument(f"unknown settings: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        if name == "decode":
            if isinstance(raw, DecodeLimits):
                kwargs[name] = raw
                continue
            raise InvalidArgument("setting 'decode' must be a table")
        kwargs[name] = _coerce(name, raw, getattr(base, name))
    if decode_values:
        dbase = DecodeLimits()
        kwargs["decode"] = DecodeLimits(
            **{k: _coerce(k, v, getattr(dbase, k)) for k, v in decode_values.items()}
        )
    return Settings(**kwargs)
