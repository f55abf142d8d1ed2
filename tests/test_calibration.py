"""Threshold computation for target false-match rates, the calibration record, and the
per-kind default thresholds it feeds (service.models.calibration, service.engine.decisions)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeAnalyzer
from hypothesis import given, settings
from hypothesis import strategies as st

from service.app import build_service
from service.config import Settings
from service.domain import CollectionKind, CollectionSpec
from service.engine.decisions import DEFAULT_TARGET_FMR, PAY_THRESHOLD_OFFSET, default_threshold
from service.errors import InvalidArgument, ModelPackError
from service.models.calibration import (
    Calibration,
    OperatingPoint,
    fmr_upper_bound,
    operating_point,
    threshold_at_fmr,
    write_into_manifest,
)

# ------------------------------------------------------------------ thresholds


def test_threshold_lets_through_exactly_floor_target_times_n() -> None:
    impostor = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    t = threshold_at_fmr(impostor, 1e-2)
    # 10 may pass (0.990..0.999); 0.989 is the highest that must not: first grid point above.
    assert t == pytest.approx(0.9891, abs=1e-12)
    assert np.count_nonzero(impostor >= t) == 10
    assert np.count_nonzero(impostor >= t - 1e-4) == 11


def test_ties_at_the_cut_are_rejected_together() -> None:
    impostor = np.zeros(1000)
    impostor[:3] = 0.9
    impostor[3:8] = 0.5  # five tied scores straddle the allowed count of 5
    t = threshold_at_fmr(impostor, 5e-3)
    assert t == pytest.approx(0.5001)
    assert np.count_nonzero(impostor >= t) == 3  # not 5: a tie cannot be split
    assert np.count_nonzero(impostor >= 0.5) == 8


def test_exactly_one_over_target_impostors_lets_the_highest_through() -> None:
    impostor = np.linspace(-0.2, 0.73, 1000)  # second highest 0.72907.., highest 0.73
    t = threshold_at_fmr(impostor, 1e-3)
    assert t == pytest.approx(0.7291)
    assert np.count_nonzero(impostor >= t) == 1


def test_too_few_impostors_says_how_many_are_needed() -> None:
    with pytest.raises(InvalidArgument) as err:
        threshold_at_fmr(np.zeros(999), 1e-3)
    assert "needs at least 1,000 impostor pairs" in err.value.message
    assert ">= 10,000 for a reliable threshold" in err.value.message
    assert "there are 999" in err.value.message
    assert err.value.metadata == {"target_fmr": "0.001", "impostor_pairs": "999", "needed": "1000"}
    threshold_at_fmr(np.zeros(1000), 1e-3)  # enough for one false match


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="not in"):
        threshold_at_fmr(np.zeros(10), 0.0)
    with pytest.raises(InvalidArgument, match="finite"):
        threshold_at_fmr(np.array([0.1, np.nan] * 600), 1e-2)
    with pytest.raises(InvalidArgument, match="same photo under two identities"):
        threshold_at_fmr(np.ones(100), 1e-2)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-1000, 999), min_size=100, max_size=3000),
    st.sampled_from([1e-2, 2e-2, 5e-2, 0.1, 0.3]),
)
def test_threshold_is_the_smallest_grid_value_meeting_the_target(
    raw: list[int], target: float
) -> None:
    scores32 = np.array(raw, dtype=np.float32) / np.float32(1000.0)  # many ties
    t = threshold_at_fmr(scores32, target)
    # The service compares float(score) >= threshold in float64 (decisions.decide); so do we
    # (numpy would compare a float32 array with a Python float in float32).
    impostor = scores32.astype(np.float64)
    allowed = math.floor(target * len(impostor) * (1 + 1e-12))
    assert np.count_nonzero(impostor >= t) <= allowed
    assert np.count_nonzero(impostor >= t - 1e-4) > allowed
    assert round(t / 1e-4) == pytest.approx(t / 1e-4, abs=1e-6)


def test_operating_point_rates_and_support() -> None:
    rng = np.random.default_rng(1)
    impostor = rng.normal(0.5, 0.05, 20_000)
    genuine = rng.normal(0.8, 0.05, 500)
    p = operating_point(genuine, impostor, 1e-3)
    assert p.false_matches <= 20 and p.fmr == p.false_matches / 20_000
    assert p.support == "measured"  # 20 expected >= 10
    assert p.tmr == np.count_nonzero(genuine >= p.threshold) / 500
    assert p.fmr <= p.fmr_upper95
    weak = operating_point(genuine, impostor, 1e-4)
    assert weak.support == "weak"  # 2 expected


def test_upper_bound_matches_clopper_pearson() -> None:
    assert fmr_upper_bound(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000))
    assert fmr_upper_bound(0, 1000) == pytest.approx(3 / 1000, rel=0.01)  # rule of three
    stats = pytest.importorskip("scipy.stats")
    for x, n in [(1, 1000), (7, 10_000), (113, 11_000_000), (4000, 5_000_000)]:
        exact = float(stats.beta.ppf(0.95, x + 1, n - x))
        assert fmr_upper_bound(x, n) == pytest.approx(exact, rel=1e-6)
    assert fmr_upper_bound(5, 5) == 1.0


# ------------------------------------------------------------------ the record


def calibration(model_id: str = "fake-v1", **points: float) -> Calibration:
    """A Calibration whose points map target FMR (keys like f1e_3) to thresholds."""
    made = []
    for key, threshold in points.items():
        target = float(key[1:].replace("_", "-"))
        made.append(
            OperatingPoint(target, threshold, 10**6, 5, 5e-6, 1.1e-5, 1000, 900, 0.9, "measured")
        )
    return Calibration(
        model_id=model_id,
        dataset="test",
        date="2026-01-01",
        created_by="tests",
        identities=10,
        images=100,
        undetected=1,
        points=tuple(made),
        unsupported={"1e-06": "needs at least 1,000,000 impostor pairs"},
        evaluation=tuple(made[:1]),
        evaluation_dataset="held out",
    )


def test_calibration_round_trips_through_json() -> None:
    cal = calibration(f1e_3=0.93, f1e_5=0.96)
    back = Calibration.from_json(cal.to_json())
    assert back == cal and back.to_json() == cal.to_json()
    assert back.threshold_for(1e-5) == 0.96 and back.threshold_for(1e-4) is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format=2), "format 2"),
        (lambda d: d["points"][0].update(threshold=1.5), "not a cosine"),
        (lambda d: d["points"][0].update(support="guess"), "support 'guess'"),
        (lambda d: d["points"][0].update(target_fmr=0), "not in (0, 1)"),
        (lambda d: d["points"][0].update(impostor_pairs="many"), "impostor_pairs 'many'"),
        (lambda d: d.pop("model_id"), "model_id None"),
        (lambda d: d.update(points={}), "points is not a list"),
    ],
)
def test_malformed_calibration_is_a_pack_error(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = calibration(f1e_3=0.93).to_doc()
    mutate(doc)
    with pytest.raises(ModelPackError, match="invalid calibration") as err:
        Calibration.from_doc(doc, where="x.json")
    assert message in err.value.message


def test_write_into_manifest_keeps_the_rest_and_checks_the_model(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"model_id": "fake-v1", "name": "p", "extra": [1, 2]}))
    cal = calibration(f1e_3=0.93)
    write_into_manifest(manifest, cal)
    doc = json.loads(manifest.read_text())
    assert doc["extra"] == [1, 2] and doc["name"] == "p"
    assert Calibration.from_doc(doc["calibration"]) == cal
    with pytest.raises(ModelPackError, match="measured on 'other'"):
        write_into_manifest(manifest, dataclasses.replace(cal, model_id="other"))
    assert Calibration.from_doc(json.loads(manifest.read_text())["calibration"]) == cal
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left


# ------------------------------------------------------------------ per-kind defaults


def test_default_threshold_takes_the_calibrated_point_of_each_kind() -> None:
    assert DEFAULT_TARGET_FMR[CollectionKind.PAY] < DEFAULT_TARGET_FMR[CollectionKind.MEMBER]
    cal = calibration(f1e_3=0.93, f1e_4=0.945, f1e_5=0.96)
    assert default_threshold(CollectionKind.PAY, 0.8, cal) == 0.96
    assert default_threshold(CollectionKind.MEMBER, 0.8, cal) == 0.93


def test_default_threshold_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    partial = calibration(f1e_3=0.93)  # no point for PAY's 1e-5
    with caplog.at_level(logging.WARNING, logger="service.engine.decisions"):
        pay = default_threshold(CollectionKind.PAY, 0.8, partial)
    assert pay == pytest.approx(0.8 + PAY_THRESHOLD_OFFSET)
    assert "no calibrated threshold for FMR 1e-05" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.engine.decisions"):
        assert default_threshold(CollectionKind.MEMBER, 0.8, None) == 0.8
    assert "not calibrated" in caplog.text


def test_new_collections_take_the_analyzers_calibration(tmp_path: Path) -> None:
    cal = calibration(f1e_3=0.625, f1e_5=0.75)
    svc = build_service(
        Settings(data_dir=tmp_path / "data"), analyzer=FakeAnalyzer(calibration=cal)
    )
    try:
        pay = svc.create_collection(CollectionSpec("pay", kind=CollectionKind.PAY))
        member = svc.create_collection(CollectionSpec("member"))
        custom = svc.create_collection(CollectionSpec("custom", threshold=0.5))
        assert (pay.threshold, member.threshold, custom.threshold) == (0.75, 0.625, 0.5)
    finally:
        svc.close()
