"""Geometry validation: plausible SI values pass, unit mistakes give one actionable line."""

from __future__ import annotations

import math

import pytest

from xspeckle.errors import GeometryError
from xspeckle.geometry import HC_EV_M, Geometry

BASE = dict(energy_ev=25000.0, pixel_size_m=6.5e-6, sample_detector_distance_m=0.7)


def test_derived_quantities():
    g = Geometry(**BASE)
    assert g.wavelength_m == pytest.approx(4.9594e-11, rel=1e-4)  # FourRod README: 4.9594e-11 m at 25 keV
    assert g.wavelength_m == pytest.approx(HC_EV_M / 25000.0)
    assert g.wavenumber_per_m == pytest.approx(2 * math.pi / g.wavelength_m)
    assert g.magnification == 1.0
    g2 = g.replace(source_sample_distance_m=140.0)
    assert g2.magnification == pytest.approx((140.0 + 0.7) / 140.0)


def test_downstream_l1_l2():
    g = Geometry(**BASE, diffuser_position="downstream", diffuser_detector_distance_m=0.2)
    assert g.require_l2() == 0.2
    assert g.sample_diffuser_distance_m == pytest.approx(0.5)
    with pytest.raises(GeometryError, match="only for a downstream"):
        _ = Geometry(**BASE).sample_diffuser_distance_m


@pytest.mark.parametrize(
    "change, match",
    [
        ({"energy_ev": 25.0}, "if it is in keV, give energy_ev=25000"),
        ({"energy_ev": 2e7}, "above 1 MeV"),
        ({"pixel_size_m": 6.5}, "if it is in µm (or mm) give pixel_size_m=6.5e-06"),
        ({"pixel_size_m": 0.0065}, "give pixel_size_m=6.5e-06"),
        ({"pixel_size_m": 1e-12}, "below 1 nm"),
        ({"sample_detector_distance_m": 700.0}, "if it is in mm give sample_detector_distance_m=0.7"),
        ({"sample_detector_distance_m": -0.7}, "sample_detector_distance_m must be a positive finite number"),
        ({"sample_detector_distance_m": 0.0}, "positive"),
        ({"energy_ev": float("nan")}, "positive finite"),
        ({"energy_ev": "high"}, "must be a number"),
        ({"diffuser_position": "middle"}, "'upstream' or 'downstream'"),
        ({"diffuser_detector_distance_m": -0.1}, "diffuser_detector_distance_m must be a positive"),
        ({"diffuser_detector_distance_m": 300.0}, "if it is in mm"),
        ({"coherence_length_x_m": 5.0}, "give it in metres"),
        ({"source_sample_distance_m": -1.0}, "source_sample_distance_m must be a positive"),
    ],
)
def test_bad_values(change, match):
    with pytest.raises(GeometryError) as ei:
        Geometry(**dict(BASE, **change))
    msg = str(ei.value)
    assert match in msg
    assert "\n" not in msg


@pytest.mark.parametrize("l2", [0.7, 0.9])
def test_downstream_l2_must_be_below_delta(l2):
    with pytest.raises(GeometryError, match="must sit between sample and detector"):
        Geometry(**BASE, diffuser_position="downstream", diffuser_detector_distance_m=l2)
    # an upstream diffuser may be farther from the detector than the sample is
    assert Geometry(**BASE, diffuser_detector_distance_m=l2).diffuser_detector_distance_m == l2


def test_missing_l2_for_downstream_methods():
    g = Geometry(**BASE, diffuser_position="downstream")
    with pytest.raises(GeometryError, match="diffuser_detector_distance_m \\(L2\\) is not set"):
        g.require_l2()


def test_attrs_roundtrip_and_missing():
    g = Geometry(**BASE, diffuser_position="downstream", diffuser_detector_distance_m=0.3)
    attrs = g.to_attrs()
    assert "source_sample_distance_m" not in attrs  # None entries omitted
    assert Geometry.from_attrs(attrs) == g
    import numpy as np

    raw = {k: (np.float64(v) if isinstance(v, float) else v.encode()) for k, v in attrs.items()}
    raw["unrelated"] = 1
    assert Geometry.from_attrs(raw) == g  # numpy scalars, bytes, extra keys
    with pytest.raises(GeometryError, match="scan.h5:/geometry: missing attribute\\(s\\) pixel_size_m, sample_detector"):
        Geometry.from_attrs({"energy_ev": 25000.0}, source="scan.h5:/geometry")
