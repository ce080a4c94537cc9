"""Export volumes and retrieval maps to TIFF for the viewers people use (ImageJ/Fiji, Avizo, Dragonfly, napari).

``xspeckle export FILE.h5 OUTDIR [--dataset NAME] [--dtype float32|uint16] [--multipage]`` (interfaces.md):

* one TIFF per slice along the first axis (``NAME_0000.tif``, ...), or one multi-page ``NAME.tif``;
  multi-component maps (``diffusion_tensor`` (3, A, H, W), ``displacement`` (2, A, H, W)) get one series per
  component (``NAME_c0_0000.tif`` / ``NAME_c0.tif``);
* the physical pixel size in the TIFF resolution tags (XResolution/YResolution in pixels per centimetre,
  ResolutionUnit = CENTIMETER, the TIFF 6.0 units) and in the ImageJ metadata (``unit = "cm"``, and for a stack
  ``spacing`` = the slice spacing in cm), so both kinds of reader agree;
* ``NAME.json`` beside them: source, dataset, units, shape, axes, pixel size (m), dtype and, for uint16,
  ``value = stored * scale + offset`` (``scale`` = (max - min) / 65535 over the whole dataset, so the
  round-trip error is at most ``scale / 2``).

The pixel size of a volume is ``/volume`` ``voxel_size_m``; of a retrieval map, the sample-plane pixel
``pixel_size_m / magnification`` from ``/geometry``. Everything is written into a temporary folder beside
OUTDIR which is then renamed onto it, so an interrupted export never leaves a half-filled OUTDIR.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from xspeckle._version import __version__
from xspeckle.errors import InputError, OutputError, ParameterError, ScanFormatError
from xspeckle.geometry import Geometry

__all__ = ["export_file", "EXPORT_DTYPES", "UINT16_MAX"]

EXPORT_DTYPES = ("float32", "uint16")
UINT16_MAX = 65535
_GROUPS = ("volume", "retrieval")


def _find_dataset(f: h5py.File, path: Path, name: str | None) -> tuple[str, h5py.Dataset]:
    groups = [g for g in _GROUPS if g in f and isinstance(f[g], h5py.Group)]
    if not groups:
        raise ScanFormatError(f"{path}: neither /volume nor /retrieval; export takes a volume or retrieval file")
    g = f[groups[0]]
    have = [k for k in g if isinstance(g[k], h5py.Dataset) and g[k].dtype.kind == "f"]
    if name is None:
        for pref in ("delta", "phase"):
            if pref in have:
                return pref, g[pref]
        if not have:
            raise ScanFormatError(f"{path}: /{groups[0]} holds no floating-point dataset to export")
        return have[0], g[have[0]]
    key = name.strip("/").split("/")[-1]
    if key not in have:
        raise ParameterError(f"{path}: no dataset {name!r} to export; the file has {', '.join(have) or 'none'}")
    return key, g[key]


def _pixel_size_m(f: h5py.File, path: Path) -> float:
    if "volume" in f and "voxel_size_m" in f["volume"].attrs:
        p = float(f["volume"].attrs["voxel_size_m"])
    elif "geometry" in f:
        geo = Geometry.from_attrs(f["geometry"].attrs, source=f"{path}:/geometry")
        p = geo.pixel_size_m / geo.magnification  # sample-plane pixel
    else:
        raise ScanFormatError(f"{path}: no voxel_size_m on /volume and no /geometry; the pixel size is unknown")
    if not (np.isfinite(p) and p > 0):
        raise ScanFormatError(f"{path}: pixel size {p!r} m is not a positive number")
    return p


def _slabs(shape):
    """Index tuples of the 2-D images of a dataset (Y, X), (Z, Y, X) or (C, Z, Y, X): (component, slice)."""
    if len(shape) == 2:
        return [(None, None)]
    if len(shape) == 3:
        return [(None, i) for i in range(shape[0])]
    return [(c, i) for c in range(shape[0]) for i in range(shape[1])]


def _read(ds, c, i) -> np.ndarray:
    idx = tuple(k for k in (c, i) if k is not None)
    return np.asarray(ds[idx] if idx else ds[()], dtype=np.float32)


@contextlib.contextmanager
def _atomic_dir(outdir: Path, overwrite: bool):
    if outdir.exists() and not overwrite:
        raise OutputError(f"{outdir}: output folder exists; choose another name or pass --overwrite")
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: exists and is not a folder")
    parent = outdir.parent
    if not parent.exists():
        raise OutputError(f"{outdir}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{outdir}: folder {parent} is not writable")
    tmp = parent / f".{outdir.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if outdir.exists():
            old = parent / f".{outdir.name}.old{os.getpid()}"
            os.replace(outdir, old)
            os.replace(tmp, outdir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_file(
    path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    dataset: str | None = None,
    dtype: str = "float32",
    multipage: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a volume or retrieval dataset as TIFF with its pixel size, plus a JSON of units and scaling.

    Parameters
    ----------
    path : path-like
        Volume file (``/volume/delta`` ...) or retrieval file (``/retrieval/phase`` ...).
    outdir : path-like
        Output folder (created; must not exist unless ``overwrite``).
    dataset : str, optional
        Dataset name (``delta``, ``beta``, ``diffusion``, ``phase``, ``transmission``, ...; a full path such as
        ``/volume/beta`` works too). Default: ``delta`` for volumes, ``phase`` for retrievals.
    dtype : {"float32", "uint16"}
        float32 is exact; uint16 maps [min, max] of the whole dataset linearly to [0, 65535]
        (``value = stored * scale + offset``, error <= scale / 2).
    multipage : bool
        One multi-page TIFF (per component) instead of one file per slice.
    overwrite : bool
        Replace an existing OUTDIR.
    progress : callable(done, total), optional
        Called after each slice written.

    Returns
    -------
    dict
        The JSON written as ``OUTDIR/NAME.json`` (``files`` lists the TIFF names).
    """
    import tifffile

    if dtype not in EXPORT_DTYPES:
        raise ParameterError(f"export: --dtype must be float32 or uint16, got {dtype!r}")
    path, outdir = Path(path), Path(outdir)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ScanFormatError(f"{path}: not an HDF5 file (or it is truncated)") from None
    with f:
        name, ds = _find_dataset(f, path, dataset)
        is_volume = ds.parent.name == "/volume"  # else a retrieval map: the first axis is the rotation angle
        if ds.ndim not in (2, 3, 4):
            raise ScanFormatError(f"{path}: {ds.name} has shape {ds.shape}; export takes 2-, 3- or 4-D images")
        p_m = _pixel_size_m(f, path)
        units = str(ds.attrs.get("units", ""))
        slabs = _slabs(ds.shape)
        scale, offset = 1.0, 0.0
        if dtype == "uint16":  # first pass: the range of the whole dataset
            lo, hi = np.inf, -np.inf
            for c, i in slabs:
                a = _read(ds, c, i)
                if not np.isfinite(a).all():
                    raise InputError(f"{path}: {ds.name} holds NaN or inf; export it as float32 (uint16 cannot hold them)")
                lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            offset = lo
            scale = (hi - lo) / UINT16_MAX if hi > lo else 1.0
        cm = p_m * 100.0  # pixel size in cm: the TIFF ResolutionUnit
        res = (1.0 / cm, 1.0 / cm)
        n_comp = ds.shape[0] if ds.ndim == 4 else None
        n_sl = ds.shape[-3] if ds.ndim >= 3 else 1
        width = max(4, len(str(n_sl - 1)))
        files: list[str] = []
        out_dtype = np.uint16 if dtype == "uint16" else np.float32
        count = [0]

        def image(c, i) -> np.ndarray:
            a = _read(ds, c, i)
            if dtype == "uint16":  # value = stored * scale + offset (module notes)
                a = np.clip(np.rint((a.astype(np.float64) - offset) / scale), 0, UINT16_MAX).astype(np.uint16)
            count[0] += 1
            if progress is not None:
                progress(count[0], len(slabs))
            return a

        with _atomic_dir(outdir, overwrite) as tmp:
            kw = dict(imagej=True, resolution=res, resolutionunit="CENTIMETER")
            comps = [None] if n_comp is None else list(range(n_comp))
            for c in comps:
                stem = name if c is None else f"{name}_c{c}"
                if ds.ndim == 2:
                    files.append(f"{stem}.tif")
                    tifffile.imwrite(tmp / files[-1], image(None, None), metadata={"unit": "cm", "axes": "YX"}, **kw)
                elif multipage:  # one ImageJ stack, streamed slice by slice (tifffile takes an iterator)
                    files.append(f"{stem}.tif")
                    tifffile.imwrite(tmp / files[-1], data=(image(c, i) for i in range(n_sl)),
                                     shape=(n_sl,) + tuple(ds.shape[-2:]), dtype=out_dtype,
                                     metadata={"unit": "cm", "axes": "ZYX", **({"spacing": cm} if is_volume else {})},
                                     **kw)
                else:
                    for i in range(n_sl):
                        files.append(f"{stem}_{i:0{width}d}.tif")
                        tifffile.imwrite(tmp / files[-1], image(c, i), metadata={"unit": "cm", "axes": "YX"}, **kw)
            info = {
                "source": str(path),
                "dataset": ds.name,
                "units": units,
                "shape": list(ds.shape),
                "axes": {2: "YX", 3: "ZYX", 4: "CZYX"}[ds.ndim] if is_volume else {2: "YX", 3: "AYX", 4: "CAYX"}[ds.ndim],
                "components": n_comp,
                "pixel_size_m": p_m,
                "slice_spacing_m": p_m if (is_volume and ds.ndim >= 3) else None,
                "theta_deg": (np.asarray(f["exchange/theta"][()], np.float64).tolist()
                              if (not is_volume and "exchange/theta" in f) else None),
                "tiff_resolution": "XResolution/YResolution in pixels per cm (ResolutionUnit CENTIMETER); ImageJ unit cm",
                "dtype": dtype,
                "scale": scale,
                "offset": offset,
                "value_formula": "value = stored * scale + offset" if dtype == "uint16" else "value = stored",
                "max_abs_error": scale / 2.0 if dtype == "uint16" else 0.0,
                "files": files,
                "xspeckle_version": __version__,
            }
            (tmp / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
