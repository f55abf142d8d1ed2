"""Prometheus metrics through a real server: calls over gRPC, a scrape over HTTP parsed with
prometheus_client's own text parser; per-server registries; disabled means no port."""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeAnalyzer, face_png
from grpc_fakes import FakeFaceService, fake_settings
from prometheus_client.parser import text_string_to_metric_families

from service.app import build_served_service
from service.config import MetricsSettings, Settings, load_settings
from service.domain import (
    CollectionKind,
    CollectionSpec,
    Decision,
    EnrollRequest,
    IdentifyRequest,
)
from service.errors import FacegateError, InvalidArgument
from service.observability.metrics import ServiceMetrics, parse_listen
from service.pipeline import timing
from service.transport.client import FaceGateClient
from service.transport.server import FaceGateServer, create_server

READY_TIMEOUT_S = 300.0
FG = "facegate.v1.FaceGate"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode("utf-8")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(samples: Samples, method: str, code: str, suffix: str = "_total") -> float:
    name = (
        "facegate_grpc_requests_total"
        if suffix == "_total"
        else f"facegate_grpc_request_duration_seconds{suffix}"
    )
    return value(samples, name, service=FG, method=method, code=code)


@pytest.fixture
def real_server(tmp_path: Path, packs_dir: Path) -> Iterator[tuple[FaceGateServer, int]]:
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        model_dir=packs_dir,
        listen="127.0.0.1:0",
        metrics={"listen": "127.0.0.1:0"},
    )
    server, port = create_server(settings, port=0)  # the real loader: timed and audited
    server.start()
    try:
        if not server.wait_ready(READY_TIMEOUT_S):
            pytest.fail(f"the real engine did not load: {server.load_error!r}")
        yield server, port
    finally:
        server.stop(None).wait(30)


def test_real_server_metrics_after_real_calls(
    real_server: tuple[FaceGateServer, int], grace_hopper_jpeg: bytes, astronaut_jpeg: bytes
) -> None:
    server, port = real_server
    assert server.metrics_port is not None and server.metrics_port > 0
    before = scrape(server.metrics_port)
    assert value(before, "facegate_engine_ready") == 1.0
    assert rpc(before, "Identify", "OK") == 0.0
    with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as client:
        client.create_collection(CollectionSpec(name="shop", kind=CollectionKind.PAY))
        client.enroll(EnrollRequest(collection="shop", uid="grace", images=(grace_hopper_jpeg,)))
        hit = client.identify(IdentifyRequest(collection="shop", image=grace_hopper_jpeg))
        assert hit.decision is Decision.MATCH
        miss = client.identify(IdentifyRequest(collection="shop", image=astronaut_jpeg))
        assert miss.decision is Decision.NO_MATCH
        with pytest.raises(FacegateError):
            client.identify(IdentifyRequest(collection="shop", image=b"not an image"))
        with pytest.raises(FacegateError):
            client.get_collection("nope")
    s = scrape(server.metrics_port)

    # Per-RPC counts and latency histograms, by method and status code.
    for method, code, n in (
        ("CreateCollection", "OK", 1),
        ("Enroll", "OK", 1),
        ("Identify", "OK", 2),
        ("Identify", "INVALID_ARGUMENT", 1),
        ("GetCollection", "NOT_FOUND", 1),
    ):
        assert rpc(s, method, code) == n, (method, code)
        assert rpc(s, method, code, "_count") == n, (method, code)
        assert rpc(s, method, code, "_sum") > 0
    assert rpc(s, "Identify", "NOT_FOUND") == 0

    # Every stage of the real pipeline moved: 4 photos decoded, 3 faces found and embedded.
    def stage_count(name: str) -> float:
        return value(s, "facegate_stage_duration_seconds_count", stage=name)

    assert stage_count(timing.DECODE) == 4  # the undecodable one is timed too
    for name in (timing.DETECT, timing.LANDMARKS, timing.ALIGN):
        assert stage_count(name) == 3, name
    assert 1 <= stage_count(timing.EMBED) <= 3  # batched runs
    assert 1 <= stage_count(timing.SEARCH) <= 3  # enrol's duplicate check + 2 identifies
    assert value(s, "facegate_batch_size_sum", queue="embed") == 3
    assert value(s, "facegate_batch_size_count", queue="embed") == stage_count(timing.EMBED)

    assert value(s, "facegate_decisions_total", action="identify", decision="MATCH") == 1
    assert value(s, "facegate_decisions_total", action="identify", decision="NO_MATCH") == 1
    assert value(s, "facegate_refusals_total", action="identify", reason="IMAGE_UNDECODABLE") == 1
    assert value(s, "facegate_gallery_users", collection="shop") == 1
    assert value(s, "facegate_gallery_faces", collection="shop") == 1

    packs = [k for k in s if k[0] == "facegate_model_pack_info"]
    assert len(packs) == 1 and dict(packs[0][1])["pack"] == "dlib-default"
    assert dict(packs[0][1])["model_id"]
    builds = [dict(k[1]) for k in s if k[0] == "facegate_build_info"]
    assert builds and builds[0]["version"] and builds[0]["grpcio"]
    assert value(s, "process_resident_memory_bytes") > 0


def test_each_server_counts_only_its_own_calls() -> None:
    on = fake_settings(metrics=MetricsSettings(listen="127.0.0.1:0"))
    a, a_port = create_server(on, service=FakeFaceService(), port=0)
    b, b_port = create_server(on, service=FakeFaceService(), port=0)
    a.start()
    b.start()
    try:
        assert a.metrics_port and b.metrics_port and a.metrics_port != b.metrics_port
        with FaceGateClient(f"127.0.0.1:{a_port}") as client:
            client.list_collections()
            client.list_collections()
        with FaceGateClient(f"127.0.0.1:{b_port}") as client:
            client.list_collections()
            client.health()
        sa, sb = scrape(a.metrics_port), scrape(b.metrics_port)
        assert rpc(sa, "ListCollections", "OK") == 2 and rpc(sb, "ListCollections", "OK") == 1
        health = {"service": "grpc.health.v1.Health", "method": "Check", "code": "OK"}
        assert value(sb, "facegate_grpc_requests_total", **health) == 1
        assert value(sa, "facegate_grpc_requests_total", **health) == 0
        # A fake engine has no stages to time, but its galleries are still sized at scrape.
        assert value(sa, "facegate_stage_duration_seconds_count", stage="detect") == 0
    finally:
        a.stop(None).wait(10)
        b.stop(None).wait(10)
    with pytest.raises(OSError):  # the endpoint goes away with the server
        scrape(a.metrics_port)


def test_disabled_metrics_open_no_port() -> None:
    for listen in ("", "0"):
        server, port = create_server(
            fake_settings(metrics=MetricsSettings(listen=listen)), service=FakeFaceService(), port=0
        )
        server.start()
        try:
            assert server.metrics_port is None
            with FaceGateClient(f"127.0.0.1:{port}") as client:
                assert client.list_collections() == []  # the server works without metrics
        finally:
            server.stop(None).wait(10)


def test_a_taken_metrics_port_leaves_the_server_serving(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        settings = fake_settings(metrics=MetricsSettings(listen=f"127.0.0.1:{busy}"))
        with caplog.at_level(logging.ERROR, logger="service.transport.server"):
            server, port = create_server(settings, service=FakeFaceService(), port=0)
        server.start()
        try:
            assert server.metrics_port is None
            assert any("metrics endpoint disabled" in r.message for r in caplog.records)
            with FaceGateClient(f"127.0.0.1:{port}") as client:
                assert client.list_collections() == []
        finally:
            server.stop(None).wait(10)


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("", None),
        ("0", None),
    ],
)
def test_parse_listen(listen: str, parsed: tuple[str, int] | None) -> None:
    assert parse_listen(listen) == parsed


@pytest.mark.parametrize("listen", ["9464", "localhost", ":9464", "host:99999", "h:x"])
def test_bad_listen_is_refused(listen: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_listen(listen)
    with pytest.raises(InvalidArgument):
        create_server(
            fake_settings(metrics=MetricsSettings(listen=listen)), service=FakeFaceService(), port=0
        )


def test_engine_stages_and_batches_reach_the_timer(tmp_path: Path) -> None:
    """The seam without a server: a FakeAnalyzer engine times decode, align, embed, search."""
    metrics = ServiceMetrics()
    svc = build_served_service(
        Settings(data_dir=tmp_path / "d", batch_window_ms=1.0),
        metrics=metrics,
        analyzer=FakeAnalyzer(),
    )
    try:
        svc.create_collection(CollectionSpec("shop"))
        svc.enroll(EnrollRequest("shop", "a", [face_png(1), face_png(1, 1)]))
        svc.identify(IdentifyRequest("shop", face_png(1, 2)))
    finally:
        svc.close()
    reg = metrics.registry

    def count(stage: str) -> float | None:
        return reg.get_sample_value("facegate_stage_duration_seconds_count", {"stage": stage})

    assert count("decode") == 3 and count("align") == 3
    assert count("detect") == 0  # the fake analyzer does not time its own stages
    assert reg.get_sample_value("facegate_batch_size_sum", {"queue": "embed"}) == 3
    assert count("embed") == reg.get_sample_value("facegate_batch_size_count", {"queue": "embed"})
    assert (count("search") or 0) >= 1
    assert metrics.model_pack == ("dlib-default", FakeAnalyzer().model_id)
