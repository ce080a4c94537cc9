"""Ground-truth simulator of speckle-based X-ray imaging (upstream and downstream diffusers).

Public API: :func:`make_preset`, :data:`PRESETS`, :class:`SimulatedScan`, :func:`write_simulated`,
:func:`simulate_preset`, and the building blocks :func:`random_diffuser`, :func:`coherence_blur`,
:func:`fokker_planck_diffusion`, :class:`Phantom` (spheres, cylinders; analytic projections),
:func:`simulate_upstream` / :func:`simulate_downstream` on a :class:`Grid`.

Presets (defaults; ``size`` sets H = W, ``angles`` A, ``positions`` P; frames are float32 counts with
1e4 photons/px Poisson noise, a beam profile and a dark level of 100 counts; ``noise=False`` for exact
expectations):

=============== ========== =========================================================== ==============
preset          geometry   sample / truth                                              P, A, H = W
=============== ========== =========================================================== ==============
pwf-beads       downstream 4 glass beads (δ 5.16e-6, β 5.6e-8), φ_min ≈ −18.8 rad         12, 1, 256
                           (10 keV, 650 nm px, L1 3 mm, L2 20 mm, x/y_coh 3.48/4.31 µm)
mist-berry      upstream   water sphere (R = 0.3 FOV) + scattering core, D_eff ≤ 5e-12 m  10, 1, 256
                           (17 keV, 5.8 µm px, Δ = 1 m, diffuser 0.5 m upstream, ×2 grid)
mist-fibres     upstream   3 patches, D tensor major 8e-12 m at 0/45/90°, anisotropy 4   10, 1, 256
tomo-beads      downstream 5 glass beads + PMMA rod; δ/β volumes (Z, Y, X), y up        2, 90, 128
tracking-shift  upstream   smooth phase, truth displacement ≤ 2 px (20 keV, 1.5 µm px)  16, 1, 256
indep-beads     downstream independent physics (independent.py): glass beads on a      12, 1, 256
                           wooden stick, 4-layer alumina diffuser, 2 % bandwidth, exact
                           propagation, 2× grid; x/y_coh 3.5/4.3 µm in truth only
indep-upstream  upstream   independent physics, water berry + glass beads, MIST set-up  10, 1, 256
=============== ========== =========================================================== ==============

:func:`xspeckle.simulate.independent.simulate_independent` is the independent simulator itself (it shares
no forward-model code with the retrieval; use it to validate methods on data their model did not make).
"""

from xspeckle.simulate.darkfield import diffusion_tensor_from_orientation, fokker_planck_diffusion
from xspeckle.simulate.detector import beam_profile, coherence_blur, expose, iotf, ipsf
from xspeckle.simulate.diffuser import gaussian_random_field, random_diffuser
from xspeckle.simulate.forward import Grid, simulate_downstream, simulate_upstream
from xspeckle.simulate.phantoms import Cylinder, Phantom, Sphere, cylinder_thickness, sphere_thickness
from xspeckle.simulate.presets import PRESETS, SimulatedScan, make_preset, simulate_preset, write_simulated

__all__ = [
    "PRESETS",
    "SimulatedScan",
    "make_preset",
    "simulate_preset",
    "write_simulated",
    "random_diffuser",
    "gaussian_random_field",
    "coherence_blur",
    "iotf",
    "ipsf",
    "beam_profile",
    "expose",
    "fokker_planck_diffusion",
    "diffusion_tensor_from_orientation",
    "Grid",
    "simulate_upstream",
    "simulate_downstream",
    "Phantom",
    "Sphere",
    "Cylinder",
    "sphere_thickness",
    "cylinder_thickness",
]
