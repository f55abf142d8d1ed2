"""Settings: defaults < TOML < environment < overrides, with sections as nested tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import DecodeLimits, Settings, load_settings
from service.errors import InvalidArgument


def test_defaults_without_sources() -> None:
    s = load_settings(environ={})
    assert s == Settings(data_dir=s.data_dir)
    assert s.decode == DecodeLimits()


def test_toml_then_env_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "facegate.toml"
    cfg.write_text(
        'listen = "0.0.0.0:1"\nmax_batch = 8\nmodel_dir = "~/packs"\n'
        "[decode]\nmax_bytes = 1000\nmax_side = 500\n",
        encoding="utf-8",
    )
    env = {"FACEGATE_MAX_BATCH": "16", "FACEGATE_DECODE_MAX_SIDE": "600"}
    s = load_settings(config_file=cfg, environ=env, listen="127.0.0.1:9")
    assert s.listen == "127.0.0.1:9"  # override beats TOML
    assert s.max_batch == 16  # env beats TOML
    assert s.model_dir == Path("~/packs").expanduser()
    # A section merges field by field: env's max_side, TOML's max_bytes, default max_pixels.
    assert s.decode == DecodeLimits(max_bytes=1000, max_side=600)


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("snapshot_every_s = 0\n", encoding="utf-8")
    s = load_settings(environ={"FACEGATE_CONFIG": str(cfg)})
    assert s.snapshot_every_s == 0.0
    assert isinstance(s.snapshot_every_s, float)


def test_override_with_a_section_object() -> None:
    limits = DecodeLimits(max_pixels=10)
    assert load_settings(environ={}, decode=limits).decode is limits
    assert load_settings(environ={}, decode={"max_pixels": 7}).decode.max_pixels == 7


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FACEGATE_MAX_BATCH": "many"}, "max_batch"),
        ({"FACEGATE_DECODE_MAX_SIDE": "1e9x"}, "decode.max_side"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_settings(environ=env)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("lisen = 'x'\n[decode]\nmax_byts = 1\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match="lisen"):
        load_settings(config_file=cfg, environ={})
    cfg.write_text("[decode]\nmax_byts = 1\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match=r"decode\.max_byts"):
        load_settings(config_file=cfg, environ={})
    cfg.write_text("decode = 3\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match="must be a table"):
        load_settings(config_file=cfg, environ={})


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="config file"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("= nope", encoding="utf-8")
    with pytest.raises(InvalidArgument, match="config file"):
        load_settings(config_file=bad, environ={})


@pytest.mark.parametrize(("raw", "want"), [("yes", True), ("0", False), ("off", False)])
def test_booleans(raw: str, want: bool) -> None:
    from service.config import _coerce

    assert _coerce("flag", raw, bool) is want
    with pytest.raises(InvalidArgument, match="true or false"):
        _coerce("flag", "maybe", bool)
