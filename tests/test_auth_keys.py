"""The keys file: generation, parsing errors (clear, naming the entry and field), hashing,
and the server's KeyRing (lookup, reload, revocation)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest

from service.access.api_keys import (
    KEY_PREFIX,
    KeyRing,
    add_key,
    generate_key,
    hash_key,
    load_keys,
    parse_keys,
    revoke_key,
)
from service.access.principal import Role
from service.errors import ApiKeyInvalid, InvalidArgument

HASH = "ab" * 32


def _entry(**fields: str | list[str]) -> str:
    body = {"id": "till-7", "role": "terminal", "sha256": HASH, **fields}
    lines = ["[[keys]]"]
    for name, value in body.items():
        if isinstance(value, list):
            lines.append(f"{name} = [" + ", ".join(f'"{v}"' for v in value) + "]")
        else:
            lines.append(f'{name} = "{value}"')
    return "\n".join(lines) + "\n"


def test_generated_keys_are_random_and_prefixed() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43
    key = next(iter(keys))
    assert hash_key(key) == hashlib.sha256(key.encode()).digest()


def test_parses_a_valid_file() -> None:
    text = (
        "version = 1\n"
        + _entry(collections=["shop", "cafe"])
        + _entry(id="admin-1", role="admin", sha256="cd" * 32)
    )
    first, second = parse_keys(text, "k.toml")
    assert (first.key_id, first.role, first.collections) == (
        "till-7",
        Role.TERMINAL,
        frozenset({"shop", "cafe"}),
    )
    assert first.sha256 == bytes.fromhex(HASH)
    assert (second.role, second.collections) == (Role.ADMIN, None)
    assert second.principal.may_use("anything")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keys = [", "not valid TOML"),
        ('[[keys]]\nid = "a"\nrole = "terminal"\n', "entry 1 (id 'a'): missing 'sha256'"),
        ('[[keys]]\nrole = "terminal"\nsha256 = "' + HASH + '"\n', "entry 1: missing 'id'"),
        (_entry(role="cashier"), "role 'cashier' is not one of terminal, enroller, admin"),
        (_entry(sha256="fgk_thekeyitself"), "sha256 must be 64 lowercase hex digits"),
        (_entry(id="bad id!"), "id 'bad id!' must be 1-64 of"),
        (_entry(collection="shop"), "unknown field(s) ['collection']"),
        (_entry(collections=[]), "collections must be a non-empty list"),
        (_entry(collections=["no spaces"]), "collection name 'no spaces' is not valid"),
        (_entry() + _entry(sha256="cd" * 32), "id 'till-7': appears more than once"),
        (_entry() + _entry(id="other"), "id 'other': has the same sha256 as 'till-7'"),
        ("version = 2\n" + _entry(), "version: 2 is not supported"),
        ("[keys]\nid = 1\n", "keys: must be an array of tables"),
        ("api_keys = []\n", "top level: unknown key(s) ['api_keys']"),
    ],
)
def test_parse_errors_name_the_file_entry_and_field(text: str, expected: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_keys(text, "/etc/facegate/keys.toml")
    assert info.value.message.startswith("keys file /etc/facegate/keys.toml: ")
    assert expected in info.value.message


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"keys file .*missing\.toml: cannot be read"):
        load_keys(tmp_path / "missing.toml")


def test_add_writes_only_the_hash_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "keys.toml"
    key, entry = add_key(path, "till-7", "terminal", ["shop"])
    text = path.read_text()
    assert key not in text and key[len(KEY_PREFIX) :] not in text
    assert hash_key(key).hex() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (loaded,) = load_keys(path)
    assert loaded == entry and loaded.collections == frozenset({"shop"})
    key2, _ = add_key(path, "enrol-1", Role.ENROLLER)
    assert [e.key_id for e in load_keys(path)] == ["till-7", "enrol-1"]
    assert key2 != key
    with pytest.raises(InvalidArgument, match="a key with id 'till-7' exists"):
        add_key(path, "till-7", "admin")
    with pytest.raises(InvalidArgument, match="role 'boss' is not one of"):
        add_key(path, "x", "boss")
    assert len(load_keys(path)) == 2  # failed adds changed nothing


def test_revoke(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    add_key(path, "a", "admin")
    add_key(path, "b", "terminal")
    assert revoke_key(path, "a").key_id == "a"
    assert [e.key_id for e in load_keys(path)] == ["b"]
    with pytest.raises(InvalidArgument, match="no key with id 'a'"):
        revoke_key(path, "a")


def test_keyring_authenticates_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    key, _ = add_key(path, "till-7", "terminal", ["shop"])
    ring = KeyRing(path)
    principal = ring.authenticate(key)
    assert (principal.key_id, principal.role, principal.collections) == (
        "till-7",
        Role.TERMINAL,
        frozenset({"shop"}),
    )
    for wrong in (key[:-1], key + "x", generate_key(), "", hash_key(key).hex(), "x" * 10_000):
        with pytest.raises(ApiKeyInvalid) as info:
            ring.authenticate(wrong)
        assert wrong not in info.value.message or wrong == ""


def test_keyring_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("version = 1\n")
    with pytest.raises(InvalidArgument, match="holds no keys: create one with"):
        KeyRing(path)


def test_keyring_reloads_changes_and_keeps_old_keys_on_a_broken_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.toml"
    old_key, _ = add_key(path, "old", "admin")
    ring = KeyRing(path, reload_s=0)
    new_key, _ = add_key(path, "new", "terminal")
    assert ring.authenticate(new_key).key_id == "new"
    revoke_key(path, "old")
    with pytest.raises(ApiKeyInvalid):
        ring.authenticate(old_key)
    good = path.read_text()
    path.write_text(good + "\n[[keys]]\nid = 'broken'\n")
    with caplog.at_level(logging.ERROR, logger="service.access.api_keys"):
        assert ring.authenticate(new_key).key_id == "new"  # previous keys kept
    assert "keeping the previous API keys" in caplog.text and "missing 'role'" in caplog.text
    os.unlink(path)
    assert ring.authenticate(new_key).key_id == "new"  # a vanished file disables nothing


def test_keyring_without_reload_ignores_changes_until_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    add_key(path, "a", "admin")
    ring = KeyRing(path, reload_s=3600)
    key, _ = add_key(path, "b", "admin")
    with pytest.raises(ApiKeyInvalid):
        ring.authenticate(key)
