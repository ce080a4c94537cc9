"""Experimental geometry of a speckle-imaging set-up, validated on construction.

Two layouts are supported (``interfaces.md``):

* ``"upstream"`` — diffuser before the sample (MIST, UMPA, XSVT, LCS).  Only the
  sample–detector distance Δ matters to those methods.
* ``"downstream"`` — diffuser between sample and detector (PWF).  Then
  ``L2 = diffuser_detector_distance_m`` and ``L1 = Δ − L2`` (sample to diffuser).

All quantities are SI.  Implausible magnitudes (energy given in keV, distances in mm,
pixel size in µm) are rejected with a message that says what was probably meant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from xspeckle.errors import GeometryError

__all__ = ["Geometry", "HC_EV_M", "wavelength_from_energy"]

#: h*c in eV·m (CODATA 2018), so that wavelength_m = HC_EV_M / energy_ev.
HC_EV_M = 1.23984198e-6


def wavelength_from_energy(energy_ev: float) -> float:
    """Photon wavelength in metres for an energy in eV (``interfaces.md``)."""
    return HC_EV_M / energy_ev


#: the numeric fields; numbers stored as text (``"17000"``, ``b"0.5"``) are read as numbers
_NUMERIC = ("energy_ev", "pixel_size_m", "sample_detector_distance_m", "diffuser_detector_distance_m",
            "source_sample_distance_m", "coherence_length_x_m", "coherence_length_y_m")


def _as_number(name: str, value: Any) -> float:
    """*value* as a float: numbers, 0-d/1-element arrays and numeric text are accepted."""
    v = value
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            v = bytes(v).decode()
        except UnicodeDecodeError:
            raise GeometryError(f"geometry: {name} must be a number, got the bytes {bytes(value)!r}") from None
    if hasattr(v, "shape") and hasattr(v, "reshape"):
        if int(getattr(v, "size", 0)) != 1:
            raise GeometryError(f"geometry: {name} must be one number, got an array of shape {tuple(v.shape)}")
        v = v.reshape(()).item()
        if isinstance(v, bytes):
            v = v.decode(errors="replace")
    if isinstance(v, bool) or v is None:
        raise GeometryError(f"geometry: {name} must be a number, got {value!r}")
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise GeometryError(f"geometry: {name} must be a number in SI units, got {value!r}") from None


def _finite_positive(name: str, value: Any) -> float:
    v = _as_number(name, value)
    if not math.isfinite(v) or v <= 0:
        raise GeometryError(f"geometry: {name} must be a positive finite number, got {value!r}")
    return v


@dataclass(frozen=True)
class Geometry:
    """Geometry of one speckle scan (all SI units).

    Parameters
    ----------
    energy_ev : float
        Photon energy in eV (1 keV – 1 MeV accepted).
    pixel_size_m : float
        Effective pixel size at the detector in metres.
    sample_detector_distance_m : float
        Δ, sample to detector, in metres.
    diffuser_position : {"upstream", "downstream"}
        Where the diffuser sits relative to the sample.
    diffuser_detector_distance_m : float, optional
        L2, diffuser to detector; required for ``"downstream"`` (PWF).
    source_sample_distance_m : float, optional
        Source to sample; ``None`` means a parallel beam.
    coherence_length_x_m, coherence_length_y_m : float, optional
        Detector-plane coherence lengths; ``None`` means "calibrate from the reference".
    """

    energy_ev: float
    pixel_size_m: float
    sample_detector_distance_m: float
    diffuser_position: str = "upstream"
    diffuser_detector_distance_m: float | None = None
    source_sample_distance_m: float | None = None
    coherence_length_x_m: float | None = None
    coherence_length_y_m: float | None = None

    def __post_init__(self) -> None:
        # numbers stored as text (an HDF5 string attribute "17000", bytes, a 1-element array) are
        # converted once here, so every later use sees a float; non-numeric text is a GeometryError
        for name in _NUMERIC:
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _as_number(name, v))
        pos = self.diffuser_position
        if isinstance(pos, (bytes, bytearray)):
            object.__setattr__(self, "diffuser_position", bytes(pos).decode(errors="replace"))
        e = _finite_positive("energy_ev", self.energy_ev)
        if e < 1000:
            raise GeometryError(
                f"geometry: energy_ev={self.energy_ev:g} is implausibly low for X-rays; "
                f"if it is in keV, give energy_ev={e * 1000:g}"
            )
        if e > 1e6:
            raise GeometryError(f"geometry: energy_ev={e:g} is above 1 MeV; give the photon energy in eV")
        p = _finite_positive("pixel_size_m", self.pixel_size_m)
        if p > 1e-3:
            hint = f"{p * 1e-6:g}" if p >= 0.05 else f"{p * 1e-3:g}"
            raise GeometryError(
                f"geometry: pixel_size_m={p:g} is larger than 1 mm; if it is in µm (or mm) give "
                f"pixel_size_m={hint}"
            )
        if p < 1e-9:
            raise GeometryError(f"geometry: pixel_size_m={p:g} is below 1 nm; give it in metres")
        d = _finite_positive("sample_detector_distance_m", self.sample_detector_distance_m)
        if d > 100:
            raise GeometryError(
                f"geometry: sample_detector_distance_m={d:g} is over 100 m; if it is in mm give "
                f"sample_detector_distance_m={d * 1e-3:g}"
            )
        if self.diffuser_position not in ("upstream", "downstream"):
            raise GeometryError(
                f"geometry: diffuser_position must be 'upstream' or 'downstream', got {self.diffuser_position!r}"
            )
        if self.diffuser_detector_distance_m is not None:
            l2 = _finite_positive("diffuser_detector_distance_m", self.diffuser_detector_distance_m)
            if l2 > 100:
                raise GeometryError(
                    f"geometry: diffuser_detector_distance_m={l2:g} is over 100 m; if it is in mm give {l2 * 1e-3:g}"
                )
            if self.diffuser_position == "downstream" and l2 >= d:
                raise GeometryError(
                    f"geometry: a downstream diffuser must sit between sample and detector, but "
                    f"diffuser_detector_distance_m={l2:g} >= sample_detector_distance_m={d:g}"
                )
        if self.source_sample_distance_m is not None:
            _finite_positive("source_sample_distance_m", self.source_sample_distance_m)
        for name in ("coherence_length_x_m", "coherence_length_y_m"):
            v = getattr(self, name)
            if v is not None:
                c = _finite_positive(name, v)
                if c > 1e-2:
                    raise GeometryError(f"geometry: {name}={c:g} is over 1 cm; give it in metres")

    # ------------------------------------------------------------------ derived
    @property
    def wavelength_m(self) -> float:
        """Wavelength λ = hc/E in metres."""
        return wavelength_from_energy(self.energy_ev)

    @property
    def wavenumber_per_m(self) -> float:
        """Wavenumber k = 2π/λ in rad/m."""
        return 2 * math.pi / self.wavelength_m

    @property
    def sample_diffuser_distance_m(self) -> float:
        """L1 = Δ − L2 (downstream diffuser only)."""
        if self.diffuser_position != "downstream":
            raise GeometryError("geometry: L1 (sample to diffuser) is defined only for a downstream diffuser")
        return self.sample_detector_distance_m - self.require_l2()

    def require_l2(self) -> float:
        """Return L2 or raise a clear error when it is unknown."""
        if self.diffuser_detector_distance_m is None:
            raise GeometryError(
                "geometry: diffuser_detector_distance_m (L2) is not set in /geometry; this method needs it "
                "(add the attribute, in metres)"
            )
        return float(self.diffuser_detector_distance_m)

    @property
    def magnification(self) -> float:
        """Geometric magnification (R1 + Δ)/R1 of a point source; 1 for a parallel beam."""
        if self.source_sample_distance_m is None:
            return 1.0
        return (self.source_sample_distance_m + self.sample_detector_distance_m) / self.source_sample_distance_m

    # ------------------------------------------------------------------ I/O
    def to_attrs(self) -> dict[str, Any]:
        """Attributes for the HDF5 group ``/geometry`` (``None`` entries omitted)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], *, source: str = "/geometry") -> "Geometry":
        """Build from a mapping such as ``h5py.File[...].attrs`` or a YAML/JSON sidecar."""
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in dict(attrs).items():
            if k not in known:
                continue
            if isinstance(v, bytes):
                try:
                    v = v.decode()
                except UnicodeDecodeError:  # not text: __post_init__ says which attribute is not a number
                    pass
            if hasattr(v, "item") and getattr(v, "shape", ()) == ():
                v = v.item()
            kw[k] = v
        missing = [n for n in ("energy_ev", "pixel_size_m", "sample_detector_distance_m") if n not in kw]
        if missing:
            raise GeometryError(f"{source}: missing attribute(s) {', '.join(missing)} (SI units, see interfaces.md)")
        return cls(**kw)

    def replace(self, **changes: Any) -> "Geometry":
        """Return a copy with some fields changed (validated again)."""
        d = asdict(self)
        d.update(changes)
        return Geometry(**d)
