"""Analytic phantoms: spheres (beads) and cylinders with exact parallel-beam projections.

Coordinates (all metres, relative to the rotation centre):

* object: ``(z, y, x)``; the rotation axis is z (detector rows); y, x span the tomographic slice.
* detector: row coordinate z and column coordinate ``s``; detector pixel ``(r, c)`` of a frame
  ``(H, W)`` with pixel p sits at ``z = (r − (H−1)/2)·p``, ``s = (c − (W−1)/2)·p``, so the rotation
  axis is the detector centre column ``(W−1)/2``.
* projection at angle θ (Radon convention): a point (x, y) lands on ``s = x·cosθ + y·sinθ``; the beam
  runs along ``t = −x·sinθ + y·cosθ``.  At θ = 0 the beam is along +y and s = x.
* volume ``(Z, Y, X)`` with voxel v: voxel ``(k, j, i)`` sits at ``z = (k − (Z−1)/2)·v`` (slice k is
  detector row k), ``y = ((Y−1)/2 − j)·v`` (**y up**: y decreases with the row index j of a slice) and
  ``x = (i − (X−1)/2)·v``.  This is the FBP convention of ``xspeckle.tomo.fbp`` (performance.md §3:
  s = x cosθ + y sinθ, x along columns, y up, as astra and algotom), so ``−FBP(phase)/(k p)`` of the
  truth projections reproduces the ``delta`` volume without flips.

Material properties are **additive**: each object adds its δ, β and its diffusion density
``diffusion`` (D_eff per metre of path, dimensionless) to whatever is already there, so an embedded
bead of glass in a polymer rod carries ``δ_glass − δ_polymer``.

Projected integrals: the chord length of a sphere of radius R at distance ρ from its centre is
``2·sqrt(R² − ρ²)``; for a cylinder along z it is ``2·sqrt(R² − (s − s0)²)``.  Pixel values average
the chord over a ``supersample × supersample`` grid inside each pixel (anti-aliasing of the rim).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "sphere_thickness",
    "cylinder_thickness",
    "Sphere",
    "Cylinder",
    "Phantom",
    "pixel_coordinates",
]


def pixel_coordinates(n: int, pixel_size_m: float, supersample: int = 1, offset_px: float = 0.0) -> np.ndarray:
    """Centre coordinates (m) of ``n·supersample`` sub-pixels of a centred axis of *n* pixels.

    Pixel j spans ``[(j − (n−1)/2 − ½)·p, (j − (n−1)/2 + ½)·p]``; its ``supersample`` sub-pixel centres
    are equally spaced inside.  ``offset_px`` shifts the axis origin (pixels).
    """
    s = int(supersample)
    k = np.arange(n * s)
    return ((k + 0.5) / s - 0.5 - (n - 1) / 2 - offset_px) * pixel_size_m


def _chord_sphere(rho2, radius):
    return 2.0 * np.sqrt(np.maximum(radius * radius - rho2, 0.0))


def _block_mean(a, s):
    if s == 1:
        return a
    h, w = a.shape
    return a.reshape(h // s, s, w // s, s).mean(axis=(1, 3))


def sphere_thickness(shape, pixel_size_m: float, center_m, radius_m: float, *, supersample: int = 3) -> np.ndarray:
    """Projected thickness (m) of a sphere, ``(H, W)`` float64, pixel-averaged.

    Parameters
    ----------
    shape : (H, W)
    pixel_size_m : float
    center_m : (y, x)
        Centre of the sphere's projection relative to the frame centre, metres.
    radius_m : float
    supersample : int
        Sub-pixels per axis for the pixel average.
    """
    h, w = shape
    y = pixel_coordinates(h, pixel_size_m, supersample)[:, None] - center_m[0]
    x = pixel_coordinates(w, pixel_size_m, supersample)[None, :] - center_m[1]
    return _block_mean(_chord_sphere(y * y + x * x, radius_m), supersample)


def cylinder_thickness(shape, pixel_size_m: float, radius_m: float, *, center_m: float = 0.0, angle_deg: float = 0.0, supersample: int = 3) -> np.ndarray:
    """Projected thickness (m) of an infinite cylinder whose axis lies in the image plane.

    ``angle_deg = 0`` puts the axis vertical (along y) at horizontal offset *center_m*; other angles
    rotate the axis towards +x.  Chord ``2·sqrt(R² − d²)`` with d the distance to the axis line.
    """
    h, w = shape
    y = pixel_coordinates(h, pixel_size_m, supersample)[:, None]
    x = pixel_coordinates(w, pixel_size_m, supersample)[None, :]
    a = np.deg2rad(angle_deg)
    d = x * np.cos(a) - y * np.sin(a) - center_m  # signed distance from the axis line
    t = _chord_sphere(d * d, radius_m) * np.ones_like(y)
    return _block_mean(t, supersample)


@dataclass(frozen=True)
class Sphere:
    """A sphere: centre ``(z, y, x)`` metres, radius metres, additive δ, β and diffusion density."""

    center_m: tuple[float, float, float]
    radius_m: float
    delta: float = 0.0
    beta: float = 0.0
    diffusion: float = 0.0


@dataclass(frozen=True)
class Cylinder:
    """A cylinder parallel to the rotation axis z through ``(y, x)`` (metres), infinite along z."""

    center_m: tuple[float, float]
    radius_m: float
    delta: float = 0.0
    beta: float = 0.0
    diffusion: float = 0.0


@dataclass
class Phantom:
    """A set of spheres and cylinders with analytic parallel-beam projections at any angle."""

    spheres: list[Sphere] = field(default_factory=list)
    cylinders: list[Cylinder] = field(default_factory=list)

    @property
    def objects(self):
        return list(self.spheres) + list(self.cylinders)

    def max_radius_m(self) -> float:
        """Largest distance of any material from the rotation axis (m), for field-of-view checks."""
        r = [np.hypot(o.center_m[-1], o.center_m[-2]) + o.radius_m for o in self.objects]
        return float(max(r)) if r else 0.0

    def project(self, theta_deg: float, shape, pixel_size_m: float, *, supersample: int = 3, offset_px=(0.0, 0.0)) -> dict[str, np.ndarray]:
        """Projected integrals at angle θ on a detector ``(H, W)``.

        Parameters
        ----------
        offset_px : (row, col)
            Position of the frame centre relative to the rotation centre in pixels (for padded grids:
            use 0 and a larger *shape* centred on the same point).

        Returns
        -------
        dict with ``delta`` = ∫δ dt (m), ``beta`` = ∫β dt (m), ``diffusion`` = ∫d dt (m, i.e. D_eff) and
        ``thickness`` = total chord length (m); each ``(H, W)`` float64, pixel-averaged.
        """
        h, w = shape
        s = int(supersample)
        th = np.deg2rad(theta_deg)
        zc = pixel_coordinates(h, pixel_size_m, s, offset_px[0])
        sc = pixel_coordinates(w, pixel_size_m, s, offset_px[1])
        out = {k: np.zeros((h, w)) for k in ("delta", "beta", "diffusion", "thickness")}
        for sp in self.spheres:
            z0, y0, x0 = sp.center_m
            s0 = x0 * np.cos(th) + y0 * np.sin(th)  # Radon: s = x cosθ + y sinθ
            r = sp.radius_m
            # bounding box in whole pixels, to stay cheap for many small beads
            r0 = max(0, int(np.floor((z0 - r) / pixel_size_m + (h - 1) / 2 + offset_px[0])) - 1)
            r1 = min(h, int(np.ceil((z0 + r) / pixel_size_m + (h - 1) / 2 + offset_px[0])) + 2)
            c0 = max(0, int(np.floor((s0 - r) / pixel_size_m + (w - 1) / 2 + offset_px[1])) - 1)
            c1 = min(w, int(np.ceil((s0 + r) / pixel_size_m + (w - 1) / 2 + offset_px[1])) + 2)
            if r1 <= r0 or c1 <= c0:
                continue
            dz = zc[r0 * s : r1 * s, None] - z0
            ds = sc[None, c0 * s : c1 * s] - s0
            chord = _block_mean(_chord_sphere(dz * dz + ds * ds, r), s)
            self._add(out, sp, chord, (slice(r0, r1), slice(c0, c1)))
        for cy in self.cylinders:
            y0, x0 = cy.center_m
            s0 = x0 * np.cos(th) + y0 * np.sin(th)
            ds = sc - s0
            chord = _chord_sphere(ds * ds, cy.radius_m)
            if s > 1:
                chord = chord.reshape(w, s).mean(axis=1)
            self._add(out, cy, np.broadcast_to(chord[None, :], (h, w)), (slice(None), slice(None)))
        return out

    @staticmethod
    def _add(out, obj, chord, sl):
        out["thickness"][sl] += chord
        if obj.delta:
            out["delta"][sl] += obj.delta * chord
        if obj.beta:
            out["beta"][sl] += obj.beta * chord
        if obj.diffusion:
            out["diffusion"][sl] += obj.diffusion * chord

    def voxelise(self, shape_zyx, voxel_size_m: float, *, supersample: int = 2, dtype=np.float32) -> dict[str, np.ndarray]:
        """Voxelised δ and β volumes ``(Z, Y, X)`` (volume fraction by ``supersample³`` sub-voxels).

        Returns dict with ``delta`` and ``beta`` (and ``diffusion`` density when any object scatters).
        """
        nz, ny, nx = shape_zyx
        s = int(supersample)
        v = voxel_size_m
        zc = pixel_coordinates(nz, v, s)
        yc = pixel_coordinates(ny, v, s)[::-1]  # y up: y = ((Y−1)/2 − j)·v
        xc = pixel_coordinates(nx, v, s)
        keys = ["delta", "beta"] + (["diffusion"] if any(o.diffusion for o in self.objects) else [])
        out = {k: np.zeros((nz, ny, nx), dtype=np.float64) for k in keys}

        def box(c, r, n):
            i0 = max(0, int(np.floor((c - r) / v + (n - 1) / 2)) - 1)
            i1 = min(n, int(np.ceil((c + r) / v + (n - 1) / 2)) + 2)
            return i0, i1

        for sp in self.spheres:
            z0, y0, x0 = sp.center_m
            (k0, k1), (j0, j1), (i0, i1) = box(z0, sp.radius_m, nz), box(-y0, sp.radius_m, ny), box(x0, sp.radius_m, nx)
            if k1 <= k0 or j1 <= j0 or i1 <= i0:
                continue
            dz = zc[k0 * s : k1 * s, None, None] - z0
            dy = yc[None, j0 * s : j1 * s, None] - y0
            dx = xc[None, None, i0 * s : i1 * s] - x0
            inside = (dz * dz + dy * dy + dx * dx <= sp.radius_m**2).astype(np.float64)
            frac = inside.reshape(k1 - k0, s, j1 - j0, s, i1 - i0, s).mean(axis=(1, 3, 5))
            for k in keys:
                val = getattr(sp, k)
                if val:
                    out[k][k0:k1, j0:j1, i0:i1] += val * frac
        for cy in self.cylinders:
            y0, x0 = cy.center_m
            dy = yc[:, None] - y0
            dx = xc[None, :] - x0
            inside = (dy * dy + dx * dx <= cy.radius_m**2).astype(np.float64)
            frac = inside.reshape(ny, s, nx, s).mean(axis=(1, 3))
            for k in keys:
                val = getattr(cy, k)
                if val:
                    out[k] += val * frac[None]
        return {k: a.astype(dtype) for k, a in out.items()}
