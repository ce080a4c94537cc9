"""The ``xspeckle`` command line (the only module that knows about it).

Commands (``interfaces.md``)::

    xspeckle simulate PRESET OUT.h5 [--seed N] [--size PX] [--angles A] [--overwrite]
    xspeckle retrieve SCAN.h5 OUT.h5 --method M [--positions 0,2,...] [--device cpu|cuda]
                      [--workers N] [--scheduler ADDRESS] [--param KEY=VALUE ...] [--overwrite]
    xspeckle calibrate SCAN.h5 [--json] [--positions ...]
    xspeckle tomo RETRIEVAL.h5 OUT.h5 [--center PX] [--overwrite]
    xspeckle fsc VOLUME_A.h5 VOLUME_B.h5 [--dataset delta] [--json]
    xspeckle info FILE.h5
    xspeckle demo [OUTDIR]
    xspeckle import SOURCE... OUT.h5 [--geometry SIDECAR] [--overwrite]   (extension)

Error contract: a user mistake (any :class:`~xspeckle.errors.InputError`, a usage
error, an unreadable file) prints ONE line ``xspeckle: error: ...`` on stderr and exits
with status 2; Ctrl-C prints one line and exits with 130.  Progress bars (rich) go to
stderr, and only when it is a terminal.
"""

import contextlib
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer

from xspeckle._version import __version__
from xspeckle.errors import InputError, MethodUnavailableError, OutputError, ParameterError, ScanFormatError

__all__ = ["app", "main", "run"]

# typer >= 0.16 vendors its own copy of click (typer._click); catch the exceptions of both.
_EXC_MODULES: list = []
for _name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
    try:
        _EXC_MODULES.append(importlib.import_module(_name))
    except ImportError:  # pragma: no cover - depends on the typer version
        pass


def _exc(name: str) -> tuple:
    return tuple({getattr(m, name) for m in _EXC_MODULES if hasattr(m, name)})


_EXIT = _exc("Exit")
_USAGE = _exc("UsageError")
_CLICKEXC = _exc("ClickException")
_ABORT = _exc("Abort")

PROG = "xspeckle"

app = typer.Typer(
    name=PROG,
    help="Speckle-based X-ray phase-contrast, dark-field and tomographic imaging.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _Interrupted(Exception):
    """Ctrl-C inside a command (kept apart from click's own KeyboardInterrupt handling)."""


# --------------------------------------------------------------------------- helpers
def _unavailable(what: str) -> MethodUnavailableError:
    return MethodUnavailableError(f"{what} is not available yet in this version of xspeckle")


def _import(module: str, name: str, what: str):
    """Import ``module.name`` lazily; a missing module or function -> MethodUnavailableError."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        # only "the module itself is missing" means unavailable; a broken import inside is a bug
        missing = getattr(exc, "name", None) or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            raise _unavailable(what) from None
        if missing.split(".")[0] != "xspeckle" and missing:
            raise MethodUnavailableError(f"{what} needs the package {missing!r}; install it with pip") from None
        raise _unavailable(what) from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise _unavailable(what)
    return fn


def _json_default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _dumps(obj: Any) -> str:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(json.loads(json.dumps(obj, default=_json_default))), allow_nan=False)


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Optional[Callable[..., None]]]:
    """Yield a progress callback ``cb(done, total)`` drawing a rich bar on stderr (TTY only).

    ``done`` may be fractional (progress inside one long projection); the bar shows whole
    steps done, the percentage and the estimated time left.  Until the first call the bar
    says "setting up" (reading the reference, building the method) instead of ``0/None``.
    """
    if not sys.stderr.isatty() or os.environ.get("XSPECKLE_NO_PROGRESS"):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[steps]}"),
        TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )
    task = prog.add_task(f"{description} (setting up)", total=None, steps="")
    started = [False]

    def cb(done=None, total=None, *args: Any, desc: Optional[str] = None, **kw: Any) -> None:
        upd: dict[str, Any] = {}
        if total is not None:
            upd["total"] = total
        if done is not None:
            upd["completed"] = done
            t = total if total is not None else prog.tasks[0].total
            upd["steps"] = f"{int(done)}/{t}" if t is not None else f"{int(done)}"
        if desc is not None or kw.get("description"):
            upd["description"] = desc or kw.get("description")
        elif not started[0]:
            upd["description"] = description
        started[0] = True
        prog.update(task, **upd)

    with prog:
        yield cb


def _check_input_file(path: Path) -> Path:
    if not path.exists():
        raise ScanFormatError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ScanFormatError(f"{path}: is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise ScanFormatError(f"{path}: file is not readable (permission denied)")
    return path


def _check_output(out: Path, overwrite: bool, *inputs: Path) -> Path:
    from xspeckle.io.atomic import check_output_path

    for i in inputs:
        with contextlib.suppress(OSError):
            if out.exists() and out.resolve() == i.resolve():
                raise OutputError(f"{out}: output would replace the input file; choose another output name")
    return check_output_path(out, overwrite=overwrite)


def _parse_params(items: List[str]) -> dict:
    """``--param KEY=VALUE`` items -> dict; VALUE is JSON when it parses, else text.

    A key given twice, an empty value and a non-finite number are user mistakes (one line).
    """
    params: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise ParameterError(f"--param {it!r}: expected KEY=VALUE, e.g. --param alpha=1e-3")
        k, v = it.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise ParameterError(f"--param {it!r}: {k!r} is not a valid parameter name")
        if not v.strip():
            raise ParameterError(f"--param {it!r}: no value after '='; give e.g. --param {k}=1e-3")
        if k in params:
            raise ParameterError(f"--param {k} is given twice ({k}={raw[k]} and {k}={v}); give each parameter once")
        try:
            value = json.loads(v)
        except ValueError:
            value = v
        if isinstance(value, float) and not math.isfinite(value):
            raise ParameterError(f"--param {it!r}: {k} must be a finite number")
        params[k] = value
        raw[k] = v
    return params


def _parse_positions_text(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    try:
        out = [int(t) for t in items]
    except ValueError:
        raise ParameterError(f"--positions {text!r}: give comma-separated diffuser position indices, e.g. 0,2,5") from None
    if any(i < 0 for i in out):
        raise ParameterError(f"--positions {text!r}: indices start at 0 and cannot be negative")
    return out


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _command(fn):
    """Wrap a command body: Ctrl-C -> _Interrupted (one line, exit 130)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise _Interrupted() from None

    return wrapper


def _version_cb(value: bool) -> None:
    if value:
        _out(f"xspeckle {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True, help="Print the version and exit."),
) -> None:
    """xspeckle: speckle-based X-ray imaging (PWF, MIST, LCS, UMPA, XSVT, FBP, FSC)."""


# --------------------------------------------------------------------------- simulate
@app.command()
@_command
def simulate(
    preset: str = typer.Argument(..., metavar="PRESET", help="Simulation preset name."),
    out: Path = typer.Argument(..., metavar="OUT.h5", help="Output scan file (HDF5)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    size: Optional[int] = typer.Option(None, "--size", help="Frame size in pixels (square)."),
    angles: Optional[int] = typer.Option(None, "--angles", help="Number of rotation angles."),
    drift: Optional[str] = typer.Option(
        None, "--drift", metavar="DY,DX",
        help="Diffuser repositioning error between the reference and sample stacks, px (pwf-beads, mist-berry, "
             "tracking-shift); the truth keeps it as /truth/drift_px."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Simulate a speckle scan with ground truth (writes a scan file)."""
    if size is not None and size < 8:
        raise ParameterError(f"--size {size}: frames need at least 8 pixels")
    if angles is not None and angles < 1:
        raise ParameterError(f"--angles {angles}: need at least 1 angle")
    _check_output(out, overwrite)
    presets = None
    with contextlib.suppress(ImportError):
        import xspeckle.simulate as sim

        presets = getattr(sim, "PRESETS", None)
    if presets is not None and preset not in presets:
        raise ParameterError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(presets))}")
    drift_px = None
    if drift is not None:
        try:
            drift_px = [float(v) for v in drift.split(",")]
        except ValueError:
            drift_px = []
        if len(drift_px) != 2 or not all(math.isfinite(v) for v in drift_px):
            raise ParameterError(f"--drift {drift!r}: give two numbers DY,DX in pixels, e.g. --drift 0.5,-1.2")
    fn = _import("xspeckle.simulate", "simulate_preset", "xspeckle simulate")
    path = fn(preset, out, seed=seed, size=size, angles=angles, overwrite=overwrite,
              **({"drift_px": drift_px} if drift_px is not None else {}))
    _out(f"wrote {path}")


# --------------------------------------------------------------------------- retrieve
@app.command()
@_command
def retrieve(
    scan: Path = typer.Argument(..., metavar="SCAN.h5", help="Input scan file."),
    out: Path = typer.Argument(..., metavar="OUT.h5", help="Output retrieval file."),
    method: str = typer.Option(..., "--method", help="Retrieval method (listed above)."),
    positions: Optional[str] = typer.Option(None, "--positions", help="Diffuser positions to use, e.g. 0,2,5 (default all)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes (CPU)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (distributed run)."),
    param: List[str] = typer.Option([], "--param", help="Method parameter KEY=VALUE (repeatable; VALUE parsed as JSON)."),
    drift: Optional[str] = typer.Option(
        None, "--drift", metavar="REGION",
        help="Correct diffuser drift before retrieval: measure each reference/sample shift in the free-space "
             "side wings (wings) or the whole frame (frame); shifts stored as /drift/shifts_px."),
    flat_mode: str = typer.Option(
        "mean", "--flat-mode", metavar="MODE",
        help="Flat-field drift: mean (one mean flat), nearest or linear (per angle, from the flats' angles in "
             "/exchange/theta_white)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Retrieve phase, transmission and dark field from a scan."""
    from xspeckle.retrieve import METHODS

    if method not in METHODS:
        raise MethodUnavailableError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if device not in ("cpu", "cuda"):
        raise ParameterError(f"--device {device!r}: use cpu or cuda")
    if workers < 1:
        raise ParameterError(f"--workers {workers}: need at least 1")
    pos = _parse_positions_text(positions)
    params = _parse_params(param)
    from xspeckle.retrieve import get_method
    from xspeckle.retrieve.params import check_params

    params = check_params(get_method(method), params)
    if scheduler is not None:
        from xspeckle.scheduler import check_scheduler_address

        check_scheduler_address(scheduler, reach=False)  # syntax only here; reached before the work below
    _check_input_file(scan)
    from xspeckle.io.scan import Scan

    with Scan(scan) as s:
        if pos is not None:
            s.positions(pos)
    _check_output(out, overwrite, scan)
    if device == "cuda":
        from xspeckle.backend import cuda_available

        if not cuda_available():
            raise MethodUnavailableError("--device cuda needs CuPy and a CUDA GPU; install xspeckle[gpu] or use --device cpu")
    if scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise MethodUnavailableError("--scheduler needs dask.distributed; install it with pip install 'xspeckle[dask]'") from None
        check_scheduler_address(scheduler)  # a closed port fails here in milliseconds, not after 20 s
        _quiet_dask_logs()
    fn = _import("xspeckle.pipeline", "retrieve_scan", "xspeckle retrieve (the pipeline)")
    with _progress(f"retrieve {method}") as cb:
        path = fn(scan, out, method=method, positions=pos, device=device, workers=workers, scheduler=scheduler,
                  params=params, overwrite=overwrite, progress=cb, drift=drift, flat_mode=flat_mode,
                  log=lambda msg: print(f"xspeckle: {msg}", file=sys.stderr))
    _out(f"wrote {path}")


def _quiet_dask_logs() -> None:
    """Silence dask.distributed's client-side log records (tracebacks on a lost scheduler or worker).

    The pipeline turns those failures into one ``xspeckle: error:`` line; their logs would add pages.
    """
    import logging

    import distributed  # noqa: F401  (its logging configuration is applied on import)

    names = [n for n in list(logging.root.manager.loggerDict) if n == "distributed" or n.startswith("distributed.")]
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


# --------------------------------------------------------------------------- calibrate
@app.command()
@_command
def calibrate(
    scan: Path = typer.Argument(..., metavar="SCAN.h5", help="Input scan file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    positions: Optional[str] = typer.Option(None, "--positions", help="Diffuser positions to use, e.g. 0,2."),
) -> None:
    """Calibrate the detector-plane coherence lengths from the reference speckle."""
    pos = _parse_positions_text(positions)
    _check_input_file(scan)
    from xspeckle.io.scan import Scan

    fn = _import("xspeckle.retrieve.coherence", "calibrate_scan", "xspeckle calibrate")
    with Scan(scan) as s:
        if pos is not None:
            s.positions(pos)
        res = dict(fn(s, positions=pos))
    if as_json:
        _out(_dumps(res))
        return
    for k, v in res.items():
        if isinstance(v, float) and k.endswith("_m"):
            _out(f"{k:32s} {v:.4g} m ({v * 1e6:.3g} µm)")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            _out(f"{k:32s} {v}")
        else:
            _out(f"{k:32s} <{type(v).__name__}>")


# --------------------------------------------------------------------------- tomo
@app.command()
@_command
def tomo(
    retrieval: Path = typer.Argument(..., metavar="RETRIEVAL.h5", help="Retrieval file (xspeckle retrieve output)."),
    out: Path = typer.Argument(..., metavar="OUT.h5", help="Output volume file."),
    center: Optional[float] = typer.Option(None, "--center", help="Rotation centre in pixels (default: found automatically)."),
    rings: Optional[str] = typer.Option(
        None, "--rings", metavar="METHOD",
        help="Remove sinogram stripes (rings) before FBP: gain (column gain errors of phase/D_eff), sorting, "
             "filtering, fitting, wavelet-fft, all (Vo et al. 2018 / Muench et al. 2009 via algotom)."),
    half_acquisition: bool = typer.Option(
        False, "--half-acquisition",
        help="360-degree offset-axis scan: stitch theta and theta+180 into 180-degree sinograms of about twice "
             "the width (axis from their overlap unless --center, given in the 360 sinogram)."),
    dc: Optional[str] = typer.Option(
        None, "--dc", metavar="METHOD",
        help="Remove each phase projection's offset and tilt before FBP: wings (line fit to the air columns)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Reconstruct delta, beta (and diffusion) volumes by filtered back-projection."""
    _check_input_file(retrieval)
    from xspeckle.io.results import open_retrieval

    with open_retrieval(retrieval) as r:
        n_ang, w = r.n_angles, r.frame_shape[1]
        if n_ang < 2:
            raise ScanFormatError(f"{retrieval}: holds {n_ang} angle; tomography needs a rotation series")
        if not ({"phase", "transmission"} & set(r.names)):
            raise ScanFormatError(f"{retrieval}: has neither phase nor transmission to reconstruct")
    if center is not None and not (math.isfinite(center) and 0 <= center < w):
        raise ParameterError(f"--center {center}: must lie inside the detector width 0..{w - 1} px")
    _check_output(out, overwrite, retrieval)
    fn = _import("xspeckle.tomo.reconstruct", "reconstruct_file", "xspeckle tomo")
    with _progress("tomo") as cb:
        path = fn(retrieval, out, center_px=center, overwrite=overwrite, progress=cb, rings=rings,
                  half_acquisition=half_acquisition, dc=dc)
    _out(f"wrote {path}")


# --------------------------------------------------------------------------- export
@app.command()
@_command
def export(
    file: Path = typer.Argument(..., metavar="FILE.h5", help="Volume (xspeckle tomo) or retrieval (xspeckle retrieve) file."),
    outdir: Path = typer.Argument(..., metavar="OUTDIR", help="Output folder for the TIFF files and their JSON."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset to export (default delta, or phase for a retrieval)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact) or uint16 (scale and offset in the JSON)."),
    multipage: bool = typer.Option(False, "--multipage", help="One multi-page TIFF instead of one file per slice."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Write TIFF slices with the pixel size in their resolution tags, for ImageJ/Fiji, Avizo, Dragonfly, napari."""
    _check_input_file(file)
    fn = _import("xspeckle.io.export", "export_file", "xspeckle export")
    with _progress("export") as cb:
        info = fn(file, outdir, dataset=dataset, dtype=dtype, multipage=multipage, overwrite=overwrite, progress=cb)
    _out(f"wrote {len(info['files'])} TIFF file(s) of {info['dataset']} and {info['dataset'].split('/')[-1]}.json to {outdir}")


# --------------------------------------------------------------------------- fsc
@app.command()
@_command
def fsc(
    volume_a: Path = typer.Argument(..., metavar="VOLUME_A.h5", help="First volume (e.g. even angles)."),
    volume_b: Path = typer.Argument(..., metavar="VOLUME_B.h5", help="Second volume (e.g. odd angles)."),
    dataset: str = typer.Option("delta", "--dataset", help="Volume dataset: delta, beta or diffusion."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Fourier shell correlation between two independent volumes (resolution in metres)."""
    from xspeckle.io.results import open_volume

    shapes = []
    for p in (volume_a, volume_b):
        _check_input_file(p)
        with open_volume(p) as v:
            if dataset not in v.names:
                raise ScanFormatError(f"{p}: no /volume/{dataset}; the file has {', '.join(v.names)}")
            shapes.append(v.shape)
    if shapes[0] != shapes[1]:
        raise ScanFormatError(f"volumes differ in shape {shapes[0]} vs {shapes[1]}; FSC needs two volumes of one grid")
    fn = _import("xspeckle.analysis.fsc", "fsc_files", "xspeckle fsc")
    res = dict(fn(volume_a, volume_b, dataset=dataset))
    if as_json:
        _out(_dumps(res))
        return
    for k in ("resolution_m", "resolution_m_1_7"):
        if k in res:
            v = res[k]
            if isinstance(v, (int, float)) and math.isfinite(v):
                txt = f"{v:.4g} m ({v * 1e6:.3g} µm)"
            else:
                txt = "not reached (the curve stays above the threshold up to Nyquist)"
            _out(f"{k:20s} {txt}")
    for k, v in res.items():
        if k not in ("resolution_m", "resolution_m_1_7") and isinstance(v, (int, float, str)):
            _out(f"{k:20s} {v}")


# --------------------------------------------------------------------------- info
def _describe(path: Path) -> List[str]:
    import h5py
    import numpy as np

    from xspeckle.io.scan import open_h5

    lines: List[str] = []
    with open_h5(path) as f:
        if "retrieval" in f:
            kind = "retrieval"
        elif "volume" in f:
            kind = "volume"
        elif "exchange/data_reference" in f or ("exchange" in f and "geometry" in f):
            kind = "scan"  # a broken scan file gets Scan's own precise message below
        elif "exchange/data" in f or "entry" in f:
            raise ScanFormatError(
                f"{path}: a DXchange/NeXus file, not an xspeckle file; convert it with: xspeckle import {path} OUT.h5"
            )
        else:
            raise ScanFormatError(
                f"{path}: not an xspeckle file (no /exchange/data_reference, /retrieval or /volume)"
            )
        datasets: List[str] = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                units = obj.attrs.get("units", "")
                units = units.decode() if isinstance(units, bytes) else units
                datasets.append(f"  /{name:34s} {str(obj.shape):22s} {obj.dtype}" + (f"  [{units}]" if units else ""))

        if kind == "scan":
            from xspeckle.io.scan import Scan

            Scan(path).close()  # validate first: one clear line for a broken scan file
        f.visititems(visit)
        root = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        geom = dict(f["geometry"].attrs) if "geometry" in f else {}
    lines.append(f"{path}: xspeckle {kind} file")
    if kind == "scan":
        from xspeckle.io.scan import Scan

        with Scan(path) as s:
            lines.append(
                f"positions={s.n_positions} angles={s.n_angles} frame={s.frame_shape[0]}x{s.frame_shape[1]} "
                f"dtype={s.dtype} flat={'yes' if s.has_flat else 'no'} dark={'yes' if s.has_dark else 'no'}"
            )
            if s.n_angles > 1:
                lines.append(f"theta: {s.theta_deg.min():g} .. {s.theta_deg.max():g} deg")
            truth = s.truth()
            lines.append("truth: " + (", ".join(sorted(truth)) if truth else "none"))
    elif kind == "retrieval":
        from xspeckle.io.results import open_retrieval

        with open_retrieval(path) as r:
            lines.append(f"method={r.method} angles={r.n_angles} frame={r.frame_shape[0]}x{r.frame_shape[1]} maps={', '.join(r.names)}"
                         + ("" if r.complete else " (INCOMPLETE: some angles missing)"))
            ptxt = json.dumps(r.parameters, sort_keys=True)
            lines.append(f"parameters: {ptxt if len(ptxt) <= 400 else ptxt[:400] + ' ...'}")
    else:
        from xspeckle.io.results import open_volume

        with open_volume(path) as v:
            lines.append(f"volume (Z, Y, X)={v.shape} voxel_size_m={v.voxel_size_m:g} maps={', '.join(v.names)}")
    if geom:
        g = ", ".join(f"{k}={(v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, 'item') else v))}" for k, v in geom.items())
        lines.append(f"geometry: {g}")
    for k, v in root.items():
        if k in ("parameters",):
            continue
        txt = str(v.item() if isinstance(v, np.generic) else v)
        lines.append(f"attr {k}: {txt[:200]}")
    lines.append("datasets:")
    lines.extend(datasets)
    return lines


@app.command()
@_command
def info(
    file: Path = typer.Argument(..., metavar="FILE.h5", help="Any xspeckle HDF5 file (scan, retrieval, volume)."),
    check: bool = typer.Option(False, "--check", help="Scan files: read every frame and validate it (NaN, zeros, corruption)."),
) -> None:
    """Summarise an xspeckle HDF5 file: shapes, dtypes, geometry, method, parameters."""
    _check_input_file(file)
    lines = _describe(file)
    if check and lines[0].endswith("scan file"):
        from xspeckle.io.scan import Scan

        with Scan(file) as s, _progress("check") as cb:
            s.reference()
            s.flat()
            s.dark()
            for i in range(s.n_angles):
                s.sample(i)
                if cb is not None:
                    cb(i + 1, s.n_angles)
        lines.append(f"check: OK, {s.n_positions} x {s.n_angles} sample frames, references, flats and darks readable (isolated NaN/inf pixels are repaired)")
    for line in lines:
        _out(line)


# --------------------------------------------------------------------------- demo
@app.command()
@_command
def demo(
    outdir: Path = typer.Argument(Path("xspeckle-demo"), metavar="[OUTDIR]", help="Output folder for the demo report."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes for the PWF tomography step (default: the CPU cores, at most 4; results are identical for any number)."),
) -> None:
    """Simulate, retrieve, reconstruct and write an HTML report (a few minutes on 2 cores)."""
    if workers is not None and workers < 1:
        raise ParameterError(f"--workers {workers}: give a number >= 1")
    if workers is None:
        from xspeckle.backend import available_cores

        workers = min(4, available_cores())
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: exists and is not a folder; choose another output folder")
    parent = outdir.parent if str(outdir.parent) else Path(".")
    if not outdir.exists() and not parent.exists():
        raise OutputError(f"{outdir}: parent folder {parent} does not exist; create it first")
    target = outdir if outdir.exists() else parent
    if not os.access(target, os.W_OK):
        raise OutputError(f"{outdir}: folder {target} is not writable")
    fn = _import("xspeckle.report", "run_demo", "xspeckle demo")
    with _progress("demo") as cb:
        path = fn(outdir, progress=cb, workers=workers)
    _out(f"wrote {path}")


# --------------------------------------------------------------------------- import
#: frame files that cannot be imported alone: they carry no geometry (a sidecar lists them)
_FRAME_SUFFIXES = (".tif", ".tiff", ".edf", ".npy")


@app.command("import")
@_command
def import_(
    sources: List[Path] = typer.Argument(..., metavar="SOURCE...", help="A YAML/JSON sidecar (TIFF/EDF frames), or NXtomo/DXchange file(s), one per diffuser position."),
    out: Path = typer.Argument(..., metavar="OUT.h5", help="Output scan file."),
    geometry: Optional[Path] = typer.Option(None, "--geometry", help="YAML/JSON file with a geometry: section (for NeXus/DXchange input)."),
    compression: Optional[str] = typer.Option(None, "--compression", help="HDF5 compression: gzip or lzf."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Convert TIFF/EDF stacks (+ sidecar), NXtomo or DXchange files into a scan file."""
    if compression not in (None, "gzip", "lzf"):
        raise ParameterError(f"--compression {compression!r}: use gzip or lzf")
    frames = [s for s in sources if s.suffix.lower() in _FRAME_SUFFIXES]
    if frames:
        raise ParameterError(
            f"{frames[0]}: {frames[0].suffix.lstrip('.').upper()} frames need a sidecar that lists them with the "
            "geometry; write e.g. scan.yaml = {geometry: {energy_ev: 25000, pixel_size_m: 6.5e-6, "
            "sample_detector_distance_m: 0.7}, reference: 'ref_*.tif', sample: 'smp_*.tif'} and run: "
            "xspeckle import scan.yaml OUT.h5 (format: docs/import.md)"
        )
    for s in sources:
        _check_input_file(s)
    _check_output(out, overwrite, *sources)
    sidecars = [s for s in sources if s.suffix.lower() in (".yaml", ".yml", ".json")]
    with _progress("import") as cb:
        if sidecars:
            if len(sources) != 1:
                raise ParameterError("give a single sidecar file (it lists every frame file)")
            if geometry is not None:
                raise ParameterError("--geometry is for NeXus/DXchange input; put the geometry in the sidecar")
            from xspeckle.io.tiff import import_sidecar

            path = import_sidecar(sources[0], out, overwrite=overwrite, compression=compression, progress=cb)
        else:
            g = None
            if geometry is not None:
                from xspeckle.io.tiff import geometry_from_mapping, load_sidecar

                g = geometry_from_mapping(load_sidecar(_check_input_file(geometry)), geometry)
            from xspeckle.io.nexus import import_hdf5

            path = import_hdf5(sources, out, geometry=g, overwrite=overwrite, compression=compression, progress=cb)
    _out(f"wrote {path}")


# --------------------------------------------------------------------------- entry points
def _fail(msg: str, code: int = 2) -> int:
    one = " ".join(str(msg).split())
    sys.stderr.write(f"{PROG}: error: {one}\n")
    sys.stderr.flush()
    return code


def _usage_message(e) -> str:
    msg = e.format_message()
    ctx = e.ctx
    cmd = ctx.command_path if ctx is not None else PROG
    return f"{msg} (see '{cmd} --help')"


def _methods_help() -> str:
    """The ``--method`` list for ``retrieve --help``, from the registry ``xspeckle.retrieve.METHODS``.

    Per method: minimum positions and outputs (Retriever ``min_positions``, ``outputs``), its one-line
    ``summary`` (else the first line of its docstring) and its ``--param`` keys; a method whose optional
    dependency is missing says which, and a broken one says so with the cause (never hidden).
    """
    from xspeckle.retrieve import METHODS, method_status
    from xspeckle.retrieve.params import parameter_names

    rows = []
    pad = " " * 20
    for name in METHODS:
        status, cls = method_status(name)
        if status == "unavailable":
            rows.append(f"  {name:17s} (not available in this installation: {cls})")
            continue
        if status == "broken":
            rows.append(f"  {name:17s} BROKEN: {cls}")
            continue
        outs = ", ".join(getattr(cls, "outputs", ()) or ())
        rows.append(f"  {name:17s} >= {int(getattr(cls, 'min_positions', 1))} position(s): {outs}")
        summary = getattr(cls, "summary", "") or (cls.__doc__ or "").strip().split("\n")[0]
        if summary:
            rows.append(f"{pad}{' '.join(summary.split())}")
        keys = parameter_names(cls)
        ktxt = ", ".join(keys) if keys is not None else "its own list (an unknown key prints it)"
        rows.append(f"{pad}--param keys: {ktxt}")
    return "Methods (--method):\n\n\b\n" + "\n".join(rows)


def _presets_help() -> str:
    """The preset list for ``simulate --help``, from the registry ``xspeckle.simulate.presets.PRESETS``."""
    try:
        from xspeckle.simulate.presets import PRESETS
    except ImportError:
        return "Presets: (the simulator is not available in this installation)"
    rows = []
    for name, text in PRESETS.items():
        rows.append(f"  {name}")
        rows.append(f"      {' '.join(str(text).split())}")
    return "Presets (PRESET):\n\n\b\n" + "\n".join(rows)


def _add_registry_help(cmd, args: List[str]) -> None:
    """Append the method and preset lists (read from their registries) to the help texts.

    Done only when help is asked for: listing the methods imports every method module.
    """
    sub = getattr(cmd, "commands", {})
    extra = {"retrieve": _methods_help, "simulate": _presets_help}
    for name, make in extra.items():
        c = sub.get(name)
        if c is not None and name in args:
            c.help = (c.help or "").rstrip() + "\n\n" + make()


@contextlib.contextmanager
def _warnings_summarised() -> Iterator[None]:
    """Collect Python warnings (numpy overflow, ...) instead of printing each one.

    On success they become ONE stderr line (count, first message, where); when the command
    fails, its one error line says what to do and the warnings are dropped.  Warnings of
    worker processes are theirs (not collected).
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        # numerical and user warnings: once per place, collected, never an exception here; other
        # categories keep the interpreter's filters (ImportWarning, DeprecationWarning: ignored)
        warnings.simplefilter("default", RuntimeWarning)
        warnings.simplefilter("default", UserWarning)
        yield
    if caught:
        w = caught[0]
        where = f"{Path(w.filename).name}:{w.lineno}"
        more = f" (and {len(caught) - 1} more)" if len(caught) > 1 else ""
        sys.stderr.write(f"{PROG}: warning: {w.category.__name__}: {' '.join(str(w.message).split())} at {where}{more}\n")


def run(argv: Optional[List[str]] = None) -> int:
    """Run the command line with *argv* (default ``sys.argv[1:]``); return the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        return _fail(f"missing command; run '{PROG} --help' to list the commands")
    cmd = typer.main.get_command(app)
    if "--help" in args or "-h" in args:
        _add_registry_help(cmd, args)
    try:
        with _warnings_summarised():
            rv = cmd.main(args=args, prog_name=PROG, standalone_mode=False)
        if rv == 130:  # typer turned a Ctrl-C outside a command body into a silent status 130
            return _fail("interrupted (Ctrl-C); no output was left under the final name", 130)
        return rv if isinstance(rv, int) else 0
    except _EXIT as e:
        return int(e.exit_code or 0)
    except _USAGE as e:
        return _fail(_usage_message(e))
    except _CLICKEXC as e:
        return _fail(e.format_message())
    except InputError as e:
        if os.environ.get("XSPECKLE_DEBUG"):
            raise
        return _fail(str(e))
    except (_Interrupted, KeyboardInterrupt, *_ABORT):
        return _fail("interrupted (Ctrl-C); no output was left under the final name", 130)
    except BrokenPipeError:  # e.g. `xspeckle info f.h5 | head -1`: the reader went away; stay quiet
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141
    except MemoryError:
        return _fail("out of memory; use fewer --workers, fewer --positions or a machine with more RAM", 1)
    except OSError as e:
        if os.environ.get("XSPECKLE_DEBUG"):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return _fail(f"{where}{e.strerror or e}")


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point (``xspeckle``)."""
    code = run(argv)
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError):  # e.g. `xspeckle info f.h5 | head -1`
        pass
    sys.exit(code)
