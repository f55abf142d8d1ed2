"""One typed settings object, built once at the entry point and passed down.

Sources, later wins: defaults < TOML file (``--config`` / ``FACEGATE_CONFIG``) < ``FACEGATE_*``
environment variables < explicit keyword overrides (CLI flags, tests). No import-time globals.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import InvalidArgument
from service.pipeline.quality import QualityLimits


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facegate"


@dataclass(frozen=True, kw_only=True)
class DecodeLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 12_000


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """``[auth]``: API keys (see ``service.access.api_keys``); no keys file = no authentication."""

    # TOML file of key ids, roles, scopes and SHA-256 hashes (``facegate keys create``).
    keys_file: Path | None = None
    # Serve a non-loopback address without keys anyway (e.g. behind an authenticating proxy).
    allow_unauthenticated: bool = False
    # How often a call may re-check the keys file for changes (revocations); 0 = every call.
    reload_s: float = 2.0


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """``[tls]``: server certificate; with ``client_ca_file`` and ``require_client_cert``, mTLS."""

    cert_file: Path | None = None  # PEM certificate chain, leaf first
    key_file: Path | None = None  # PEM private key of the leaf
    client_ca_file: Path | None = None  # PEM CA bundle that client certificates must chain to
    require_client_cert: bool = False


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """``[audit]``: the append-only audit log (JSON lines, one file per UTC day)."""

    enabled: bool = True
    # Directory of the daily files; default: <data_dir>/audit.
    path: Path | None = None
    # Whole days kept; a day's file is deleted only once all of it is older. 0 = keep forever.
    retention_days: int = 365
    # fsync after each record: "always", "writes" (enrol/delete/import/admin, not identify or
    # verify), or "never" (the OS flushes; a power cut may lose the last seconds).
    fsync: str = "writes"


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    """``[metrics]``: the Prometheus endpoint, on its own port."""

    # host:port of the HTTP endpoint (port 0 picks a free one); "" or "0" disables it.
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True, kw_only=True)
class CryptoSettings:
    """``[crypto]``: keys for templates and snapshots at rest (see ``service.crypto.data_keys``)."""

    # The key itself (base64 or hex of 32 bytes); meant for FACEGATE_CRYPTO_KEY.
    key: str | None = field(default=None, repr=False)
    # A file holding the key. Neither set: <data_dir>/template.key, created on first start.
    key_file: Path | None = None
    # An older key still accepted for reading while `facegate crypto rotate-key` runs.
    previous_key_file: Path | None = None
    # Master secret of revocable collections' transforms; default <data_dir>/transform.key.
    transform_key_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class QualitySettings:
    """``[quality.enroll]`` / ``[quality.identify]``: server-wide changes to the quality
    presets (``QualityPolicy.enroll()`` / ``.identify()``); a collection may change them
    again. Identify's limits also apply to Verify."""

    enroll: QualityLimits = field(default_factory=QualityLimits)
    identify: QualityLimits = field(default_factory=QualityLimits)


@dataclass(frozen=True, kw_only=True)
class LivenessSettings:
    """``[liveness]``: presentation-attack detection (MiniFASNetV2 + MiniFASNetV1SE, fused).

    Without ``model_dir`` there is no liveness check at all: the server says so at start
    and in GetServerInfo, and collections that would require it are served without it.
    """

    # Directory holding MiniFASNetV2.onnx and MiniFASNetV1SE.onnx.
    model_dir: Path | None = None
    # sha256 the files must have; "" = the known Apache-2.0 exports' digests.
    v2_sha256: str = ""
    v1se_sha256: str = ""
    # Fused real-probability below which a face is refused (LIVENESS_FAILED).
    threshold: float = 0.5
    # Collection kinds that require liveness unless the collection says otherwise:
    # comma-separated "pay" and/or "member"; "" = only collections that opt in.
    require_for: str = "pay"
    # Also check enrolment photos (not only Identify and Verify probes) where required.
    check_enroll: bool = True


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
    # Above this many users an un-hinted Identify answers NEED_HINT, for collections created
    # without their own limit: -1 = by kind (PAY: 100, from the 1:N false-match budget in
    # service/engine/decisions.py; MEMBER: never), 0 = never, N = above N users.
    default_hint_required_above: int = -1
    # Secret for keyed phone-number hashes and probe tokens; generated into data_dir when unset.
    secret_file: Path | None = None
    snapshot_every_s: float = 300.0
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    crypto: CryptoSettings = field(default_factory=CryptoSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    liveness: LivenessSettings = field(default_factory=LivenessSettings)

    @property
    def packs_dir(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.data_dir / "packs"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "facegate.sqlite3"

    @property
    def snapshot_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def audit_dir(self) -> Path:
        return self.audit.path if self.audit.path is not None else self.data_dir / "audit"


def _coerce(name: str, raw: Any, target: Any) -> Any:
    """Convert a TOML/env value to the field's declared type (``target``: a type or union)."""
    kinds = typing.get_args(target) or (target,)
    try:
        if raw is None and type(None) in kinds:
            return None
        if bool in kinds:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if int in kinds:
            return int(raw)
        if float in kinds:
            return float(raw)
        if Path in kinds:
            return Path(str(raw)).expanduser()
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"setting {name!r}: cannot use {raw!r}: {exc}") from exc


def _build(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    """Build the dataclass ``cls`` from raw values; nested dataclass fields are sections."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise InvalidArgument(f"unknown settings: {', '.join(where + n for n in sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        target = hints[name]
        if isinstance(target, type) and dataclasses.is_dataclass(target):
            if isinstance(raw, target):
                kwargs[name] = raw
            elif isinstance(raw, Mapping):
                kwargs[name] = _build(target, raw, f"{where}{name}.")
            else:
                raise InvalidArgument(f"setting {where}{name!r} must be a table")
        else:
            kwargs[name] = _coerce(where + name, raw, target)
    return cls(**kwargs)


def _from_env(cls: type[Any], env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """``FACEGATE_<FIELD>`` and ``FACEGATE_<SECTION>_<FIELD>`` variables, as raw values."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name.upper()
        target = hints[f.name]
        if isinstance(target, type) and dataclasses.is_dataclass(target):
            section = _from_env(target, env, key + "_")
            if section:
                out[f.name] = section
        elif key in env:
            out[f.name] = env[key]
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from defaults < TOML < environment < ``overrides``. A nested dataclass field
    of ``Settings`` (e.g. ``decode``) is a TOML table ``[decode]`` and the environment
    variables ``FACEGATE_DECODE_<FIELD>``; an override may be a dataclass or a mapping."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or (Path(env["FACEGATE_CONFIG"]) if env.get("FACEGATE_CONFIG") else None)
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"config file {path}: {exc}") from exc
    values = _merge(values, _from_env(Settings, env, "FACEGATE_"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings: Settings = _build(Settings, values, "")
    return settings
