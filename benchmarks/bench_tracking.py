"""Tracking family benchmark: xspeckle LCS / UMPA / XSVT / XST against mbipy on the same input.

Input: the simulator's ``tracking-shift`` preset (upstream diffuser, smooth weak-absorbing phase
object that shifts the speckle by up to ~2 px, known displacement field, Poisson noise), 16
positions (XST: the first position only), normalised with ``SimulatedScan.normalised()``.
Both codes get the same arrays, each in its own layout (ours ``(N, H, W)``; mbipy LCS
``(H, W, N)``, mbipy UMPA/XST/XSVT ``(N, H, W)``; transposes are done outside the timings).

Sign/units mapping (methods.md §2–3, checked here on a known shift): mbipy LCS returns
``phase_gx = u_x``, ``phase_gy = u_y`` (+u, px).  mbipy 0.1.0's explicit trackers (``umpa``,
``xst``, ``xsvt``, ``xst_xsvt``) return ``(d_y, d_x)`` with the +u sign but offset by a constant
(−2.00 px in both axes on every size and search window we tried); we calibrate that offset by
matching the reference against itself and subtract it (UMPA++'s ``match_unbiased`` idea), and
crop their "valid" output (``search//2 + template//2`` px per side) back into image coordinates.

Figures: median wall time of ``repeats`` runs (``common.bench``), RMS error against the true
displacement over the common interior, and RMS difference ours − mbipy (px).

Standalone: ``python benchmarks/bench_tracking.py [--quick]`` writes ``benchmarks/results/tracking.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench, main_standalone, md_table, section  # noqa: E402

TITLE = "Speckle tracking (LCS, UMPA, XSVT, XST): xspeckle vs mbipy"


def _mbipy():
    """Import mbipy 0.1.0 (it needs ``importlib.util`` imported first), or None."""
    try:
        import importlib.util  # noqa: F401  (mbipy's config.py uses importlib.util without importing it)

        import mbipy.src.phase_retrieval as explicit
        import mbipy.src.phase_retrieval.implicit as implicit

        return explicit, implicit
    except Exception:  # ImportError or its import-time AttributeError
        return None


def _rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


def run(quick: bool = False) -> str:
    from xspeckle.retrieve.lcs import LCSModel, LCSRetriever, lcs
    from xspeckle.retrieve.umpa import UMPARetriever, umpa
    from xspeckle.retrieve.xsvt import xsvt
    from xspeckle.simulate import make_preset

    n = 128 if quick else 256  # mbipy xst_xsvt needs ~0.7 GB at 128 px, x16 at 512 px
    repeats = 2 if quick else 3
    s = 4  # search radius, px (search window 9 x 9)
    sc = make_preset("tracking-shift", size=n, seed=0)
    ref, dat = sc.normalised()
    sam = dat[:, 0]
    truth = sc.truth["displacement"][:, 0]
    P = ref.shape[0]
    geom = sc.geometry
    margin = 12  # common interior for all comparisons (>= search + template halves + 2)
    inner = (slice(None), slice(margin, n - margin), slice(margin, n - margin))

    mb = _mbipy()
    timings, rows = [], []

    def add(method, impl, t, disp, ref_disp=None, note=""):
        err = _rms((disp - truth)[inner]) if disp is not None else float("nan")
        diff = _rms((disp - ref_disp)[inner]) if (disp is not None and ref_disp is not None) else None
        rows.append([method, impl, t.cell() if t is not None else "—", f"{err:.3f}",
                     f"{diff:.3f}" if diff is not None else "—", note])
        if t is not None:
            timings.append(t)

    # ------------------------------------------------------------------ LCS
    m_lcs = LCSModel(ref, derivative="central")
    t = bench(lambda: m_lcs(sam, refine=0), label="lcs call", warmup=1, repeats=3 * repeats)
    ours_lcs_c = m_lcs(sam, refine=0)["displacement"]
    t8 = bench(lambda: m_lcs(sam, refine=2), label="lcs refine call", warmup=1, repeats=3 * repeats)
    ours_lcs = m_lcs(sam, refine=2)["displacement"]
    r_lcs = LCSRetriever(ref, geom)
    tr = bench(lambda: r_lcs(sam), label="lcs retriever", warmup=1, repeats=3 * repeats)
    tf = bench(lambda: lcs(reference=ref, sample=sam, refine=0), label="lcs fn", warmup=0, repeats=repeats)
    theirs_lcs = None
    if mb is not None:
        _, imp = mb
        ref_l = np.ascontiguousarray(np.moveaxis(ref, 0, -1))
        sam_l = np.ascontiguousarray(np.moveaxis(sam, 0, -1))
        obj = imp.Lcs(ref_l)
        tm = bench(lambda: obj(sam_l), label="mbipy Lcs call", warmup=1, repeats=3 * repeats)
        res = obj(sam_l)
        theirs_lcs = np.stack([np.asarray(res.phase_gx), np.asarray(res.phase_gy)]).astype(np.float32)
        tmf = bench(lambda: imp.lcs(sam_l, ref_l), label="mbipy lcs fn", warmup=0, repeats=repeats)
    add("LCS", "xspeckle `LCSModel.__call__(refine=0)` (np.gradient, as mbipy)", t, ours_lcs_c, theirs_lcs,
        "per projection (T, u, residual), reference work done")
    add("LCS", "xspeckle `LCSModel.__call__(refine=2)` (the default)", t8, ours_lcs, theirs_lcs,
        "two resample-and-solve passes")
    add("LCS", "xspeckle `LCSRetriever.__call__` (default, + phase integration)", tr, ours_lcs, theirs_lcs,
        "adds Frankot–Chellappa on a 2H×2W pad")
    add("LCS", "xspeckle `lcs(refine=0)` (reference work + 1 projection)", tf, ours_lcs_c, theirs_lcs, "")
    if mb is not None:
        add("LCS", "mbipy 0.1.0 `Lcs.__call__`", tm, theirs_lcs, None, "per projection (T, u), SVD pinv precomputed")
        add("LCS", "mbipy 0.1.0 `lcs()`", tmf, theirs_lcs, None, "")

    # ------------------------------------------------------------------ UMPA
    r_umpa = UMPARetriever(ref, geom, window=2, max_shift=s)
    t = bench(lambda: r_umpa(sam), label="umpa call", warmup=1, repeats=repeats)
    ours_umpa = r_umpa(sam)["displacement"]
    tp = bench(lambda: umpa(reference=ref, sample=sam, window=2, max_shift=s, subpixel="paraboloid"),
               label="umpa parab", warmup=0, repeats=repeats)
    ours_umpa_p = umpa(reference=ref, sample=sam, window=2, max_shift=s, subpixel="paraboloid")["displacement"]
    theirs_umpa = offset = None
    if mb is not None:
        exp, _ = mb
        sw, tw = (2 * s + 1, 2 * s + 1), (5, 5)
        crop = s + 2

        def mb_umpa(a, b):
            out = exp.umpa(a, b, search_window=sw, template_window=tw, df=True)
            d = np.zeros((2, n, n), np.float32)
            d[0, crop:n - crop, crop:n - crop] = out[1]  # d_x
            d[1, crop:n - crop, crop:n - crop] = out[0]  # d_y
            return d

        tm = bench(lambda: exp.umpa(sam, ref, search_window=sw, template_window=tw, df=True),
                   label="mbipy umpa", warmup=0, repeats=repeats)
        zero = mb_umpa(ref, ref)
        offset = np.median(zero[:, crop:n - crop, crop:n - crop], axis=(1, 2))
        theirs_umpa = mb_umpa(sam, ref) - offset[:, None, None]
    add("UMPA (5×5 Hamming, DF, ±4 px)", "xspeckle `UMPARetriever.__call__` (Gauss–Newton sub-pixel)", t, ours_umpa,
        theirs_umpa, "incl. phase integration")
    add("UMPA (5×5 Hamming, DF, ±4 px)", "xspeckle `umpa(subpixel='paraboloid')`", tp, ours_umpa_p, theirs_umpa, "")
    if mb is not None:
        add("UMPA (5×5 Hamming, DF, ±4 px)", "mbipy 0.1.0 `umpa(df=True)`", tm, theirs_umpa, None,
            f"offset {offset[0]:+.2f}/{offset[1]:+.2f} px removed")

    # ------------------------------------------------------------------ XSVT / hybrid / XST
    cases = [("XSVT (vector, ±4 px)", 0, P, "xsvt"), ("hybrid XST–XSVT (3×3, ±4 px)", 1, P, "xst_xsvt"),
             ("XST (1 pair, 7×7, ±4 px)", 3, 1, "xst")]
    for label, tpl, npos, mbname in cases:
        rr, ss = ref[:npos], sam[:npos]
        t = bench(lambda: xsvt(reference=rr, sample=ss, template=tpl, max_shift=s), label=label, warmup=0,
                  repeats=repeats)
        ours = xsvt(reference=rr, sample=ss, template=tpl, max_shift=s)["displacement"]
        theirs = None
        if mb is not None:
            exp, _ = mb
            sw, tw = (2 * s + 1, 2 * s + 1), (2 * tpl + 1, 2 * tpl + 1)
            crop = s + tpl
            if mbname == "xsvt":
                call = lambda a, b: exp.xsvt(a, b, search_window=sw)  # noqa: E731
            elif mbname == "xst_xsvt":
                call = lambda a, b: exp.xst_xsvt(a, b, search_window=sw, template_window=tw)  # noqa: E731
            else:
                call = lambda a, b: exp.xst(a[0], b[0], search_window=sw, template_window=tw)  # noqa: E731

            def mbd(a, b, call=call, crop=crop):
                out = call(a, b)
                d = np.zeros((2, n, n), np.float32)
                d[0, crop:n - crop, crop:n - crop] = out[2]  # (T, d_y, d_x, df)
                d[1, crop:n - crop, crop:n - crop] = out[1]
                return d

            tm = bench(lambda: call(ss, rr), label="mbipy " + mbname, warmup=0, repeats=repeats)
            zero = mbd(rr, rr)
            off = np.median(zero[:, crop:n - crop, crop:n - crop], axis=(1, 2))
            theirs = mbd(ss, rr) - off[:, None, None]
        add(label, f"xspeckle `xsvt(template={tpl})`" + (f", N = {npos}" if npos == 1 else ""), t, ours, theirs, "")
        if mb is not None:
            add(label, f"mbipy 0.1.0 `{mbname}`", tm, theirs, None, f"offset {off[0]:+.2f}/{off[1]:+.2f} px removed")

    head = ["method", "implementation", "time (ms)", "RMS error vs truth (px)", "RMS diff vs mbipy (px)", "note"]
    body = (
        f"Input: simulator preset `tracking-shift`, {n} × {n}, {P} positions (XST: 1), |u| up to "
        f"{np.abs(truth).max():.2f} px, Poisson noise; errors over the interior [{margin}:{n - margin}]². "
        f"Times: median of {repeats} runs, ms.\n\n" + md_table(head, rows)
        + ("\n\nmbipy is not installed (`pip install xspeckle[bench]`): only xspeckle rows." if mb is None else "")
        + "\n\nNotes: mbipy 0.1.0's explicit trackers return displacements offset by a constant (measured "
          "above by matching the reference against itself) — removed before comparing. Its LCS uses "
          "`np.gradient`, as ours by default; the `refine=0` row is the like-for-like comparison, the "
          "default adds two resample-and-solve passes (see \"LCS defaults\" below)."
    )
    cmd = "python benchmarks/bench_tracking.py" + (" --quick" if quick else "")
    return section(TITLE, body, cmd, quick=quick, timings=timings) + "\n" + lcs_defaults(quick)


def _slope(a, b):
    """Least-squares slope of a on b after removing both means."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (b @ b))


def lcs_defaults(quick: bool = False) -> str:
    """LCS / LCS-DF defaults (issue 14): phase slope and error by derivative stencil and refine passes on
    the smooth-refraction set at 2048², N = 10 (and the preset sets at 256²), against mbipy and
    LCS-Retrieval on the same input; LCS-DF set-up time, NumPy path with the old 9-point default
    (before) vs the numba kernels (after)."""
    import time

    import xspeckle.retrieve.lcs as L
    from xspeckle.simulate import make_preset

    n = 512 if quick else 2048
    P = 10
    sc = make_preset("tracking-shift", size=n, seed=0, positions=P)
    ref, dat = sc.normalised()
    sam = dat[:, 0]
    g = sc.geometry
    m = 12
    i = (slice(m, n - m), slice(m, n - m))
    iu = (slice(None), *i)
    tu = sc.truth["displacement"][:, 0]
    tp = sc.truth["phase"][0]
    mask = sc.truth["sample_mask"][0][i]

    def perr(ph):  # relative RMS phase error over the sample (background = border median, as the retriever)
        d = (ph - tp)[i]
        return float(np.sqrt(np.mean(d[mask] ** 2) / np.mean(tp[i][mask] ** 2)))

    rows, timings = [], []
    # set-up: before = NumPy path, 9-point stencil (the previous default); after = numba kernels, central
    saved = L._USE_NUMBA
    try:
        L._USE_NUMBA = False
        t0 = time.perf_counter()
        L.LCSDFRetriever(ref, g, derivative="fd8")
        before = time.perf_counter() - t0
        L._USE_NUMBA = saved
        L.LCSDFRetriever(ref[:, :64, :64].copy(), g)  # kernel load, not timed
        t_after = bench(lambda: L.LCSDFRetriever(ref, g), label="lcs-df setup", warmup=0, repeats=3)
        timings.append(t_after)
    finally:
        L._USE_NUMBA = saved
    setup = (f"LCS-DF set-up (`LCSDFRetriever(reference, geometry)`, {n}², N = {P}): before {before:.2f} s "
             f"(NumPy path, 9-point stencil: the previous default), after {t_after.median_s:.2f} s median of 3 "
             f"(numba kernels, central stencil): {before / t_after.median_s:.1f}x faster.")
    for der in ("central", "fd8"):
        model = L.LCSModel(ref, "df", alpha=1e-4, derivative=der)
        for rf in (0, 1, 2):
            tt = bench(lambda: L._run(model, sam, iterations=0, max_shift=None, weak_absorption=False, refine=rf),
                       label=f"df {der} {rf}", warmup=1, repeats=3)
            timings.append(tt)
            out = L._with_geometry(L._run(model, sam, iterations=0, max_shift=None, weak_absorption=False,
                                          refine=rf), model, g, "fc")
            dflt = " **(default)**" if (der, rf) == ("central", 2) else ""
            rows.append([f"xspeckle LCS-DF, derivative={der}, refine={rf}{dflt}", tt.cell(),
                         f"{_slope(out['displacement'][iu], tu[iu]):.3f}", f"{_slope(out['phase'][i], tp[i]):.3f}",
                         f"{perr(out['phase']):.4f}"])
    R, S = np.ascontiguousarray(np.moveaxis(ref, 0, -1)), np.ascontiguousarray(np.moveaxis(sam, 0, -1))
    mb = _mbipy()
    if mb is not None:
        _, imp = mb
        tm = bench(lambda: imp.lcs_df(S, R), label="mbipy lcs_df", warmup=0, repeats=1)
        res = imp.lcs_df(S, R)
        u = np.stack([np.asarray(res.phase_gx), np.asarray(res.phase_gy)]).astype(np.float32)
        from xspeckle.retrieve.tracking import phase_from_displacement

        ph = phase_from_displacement(u[0], u[1], g)
        rows.append(["mbipy 0.1.0 `lcs_df` (reference work included)", tm.cell(), f"{_slope(u[iu], tu[iu]):.3f}",
                     f"{_slope(ph[i], tp[i]):.3f}", f"{perr(ph):.4f}"])
    try:
        from lcs.api import lcs_df as lr_df

        from xspeckle.retrieve.tracking import phase_from_displacement

        tl = bench(lambda: lr_df(R, S, win_size=1, alpha=1e-5), label="lcs-retrieval", warmup=0, repeats=1)
        r = lr_df(R, S, win_size=1, alpha=1e-5)  # [T, dy, dx, DF]
        u = np.stack([r[..., 2], r[..., 1]]).astype(np.float32)
        ph = phase_from_displacement(u[0], u[1], g)
        rows.append(["LCS-Retrieval 0.1.1 `lcs_df(win_size=1)` (reference work included)", tl.cell(),
                     f"{_slope(u[iu], tu[iu]):.3f}", f"{_slope(ph[i], tp[i]):.3f}", f"{perr(ph):.4f}"])
    except ImportError:
        pass
    body = (f"Input: `tracking-shift` (smooth refraction, |u| ≤ 2 px, Poisson noise), {n}², N = {P}; slopes "
            f"(least squares, means removed) of retrieved on true displacement and phase over [{m}:{n - m}]²; "
            "phase error = relative RMS over the sample mask; peers' displacements integrated by our "
            "Frankot–Chellappa. Times: per projection (ours, reference work done; median of 3) in ms.\n\n"
            + md_table(["solver", "time (ms)", "slope u", "slope phase", "phase error"], rows) + "\n\n" + setup
            + "\n\n" + _preset_table(quick) + "\n\n" + _independent_table(quick))
    cmd = "python benchmarks/bench_tracking.py" + (" --quick" if quick else "")
    return section("LCS defaults (issue 14): derivative stencil and refine passes", body, cmd, quick=quick,
                   timings=timings)


def _preset_table(quick: bool) -> str:
    """LCS-DF phase error by stencil and refine passes on the three preset sets (256², their default N)."""
    import xspeckle.retrieve.lcs as L
    from xspeckle.simulate import make_preset

    n = 128 if quick else 256
    head = ["set (N)"] + [f"{d}, refine={r}" for d in ("central", "fd8") for r in (0, 1, 2)]
    rows = []
    for preset in ("tracking-shift", "pwf-beads", "mist-berry"):
        sc = make_preset(preset, size=n, seed=0)
        ref, dat = sc.normalised()
        tp = sc.truth["phase"][0]
        mask = sc.truth["sample_mask"][0]
        row = [f"`{preset}` ({ref.shape[0]})"]
        for der in ("central", "fd8"):
            model = L.LCSModel(ref, "df", alpha=1e-4, derivative=der)
            for rf in (0, 1, 2):
                out = L._with_geometry(L._run(model, dat[:, 0], iterations=0, max_shift=None, weak_absorption=False,
                                              refine=rf), model, sc.geometry, "fc")
                ph, tt = out["phase"], tp
                if (~mask).any():  # compare with the background level of each map removed
                    ph, tt = ph - np.median(ph[~mask]), tp - np.median(tp[~mask])
                row.append(f"{np.sqrt(np.mean((ph - tt)[mask] ** 2) / np.mean(tt[mask] ** 2)):.3f}")
        rows.append(row)
    return (f"LCS-DF relative RMS phase error over the sample mask at {n}² (background of each map set to "
            "the truth's):\n\n" + md_table(head, rows))



def _independent_table(quick: bool) -> str:
    """LCS / LCS-DF phase error on the independent downstream simulation (indep-beads, 12 positions)."""
    import importlib.util  # noqa: F401  (mbipy 0.1.0 needs it imported first)

    from xspeckle.retrieve.lcs import LCSDFRetriever, LCSRetriever
    from xspeckle.retrieve.tracking import phase_from_displacement
    from xspeckle.simulate import make_preset

    n = 128 if quick else 256
    sc = make_preset("indep-beads", size=n, seed=0)
    ref, dat = sc.normalised()
    sam = dat[:, 0]
    truth, mask = sc.truth["phase"][0], sc.truth["sample_mask"][0]

    def rel(ph):
        return f"{np.sqrt(np.mean((ph - truth)[mask] ** 2) / np.mean(truth[mask] ** 2)):.3f}"

    rows = []
    for cls in (LCSRetriever, LCSDFRetriever):
        for kw, label in (({}, "default (central, refine=2)"), ({"refine": 0}, "refine=0"),
                          ({"refine": 0, "derivative": "fd8"}, "refine=0, fd8 (previous default)"),
                          ({"iterations": 2, "refine": 0}, "iterations=2, refine=0")):
            rows.append([f"xspeckle `{cls.name}` {label}", rel(cls(ref, sc.geometry, **kw)(sam)["phase"])])
    mb = _mbipy()
    if mb is not None:
        _, imp = mb
        res = imp.Lcs(np.ascontiguousarray(np.moveaxis(ref, 0, -1)))(np.ascontiguousarray(np.moveaxis(sam, 0, -1)))
        ph = phase_from_displacement(np.asarray(res.phase_gx, np.float32), np.asarray(res.phase_gy, np.float32),
                                     sc.geometry)
        rows.append(["mbipy 0.1.0 `Lcs` (its u integrated by our Frankot–Chellappa)", rel(ph)])
    return (f"Independent downstream simulation (`indep-beads`: exact propagation, 4-layer alumina diffuser, 2 % "
            f"bandwidth; not our forward model), {n}², {ref.shape[0]} positions; relative RMS phase error over "
            "the sample mask (issue 14 criterion ≤ 0.35):\n\n" + md_table(["solver", "phase error"], rows))


if __name__ == "__main__":
    main_standalone(__file__, TITLE, run)
