"""Ground-truth simulator of speckle-based X-ray imaging (upstream and downstream diffusers).

Public API: :func:`make_preset`, :data:`PRESETS`, :class:`SimulatedScan`, :func:`write_simulated`,
:func:`simulate_preset`, and the building blocks :func:`random_diffuser`, :func:`coherence_blur`,
:func:`fokker_planck_diffusion`, :class:`Phantom` (spheres, cylinders; analytic projections).
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
