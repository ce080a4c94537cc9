"""Tomography: FBP (fast Fourier gridding and a reference back-projector), rotation centre,
conversion of phase / transmission / D_eff sinograms to delta / beta / dark-field volumes,
quadratic background removal, ring (stripe) removal, 360-degree / half-acquisition stitching, per-projection
offset and tilt removal, and the reconstruction of volumes (:func:`reconstruct`, arrays or file-backed maps;
:func:`reconstruct_file`, a retrieval file)."""

from xspeckle.tomo.center import find_center, find_center_pair, opposite_pair
from xspeckle.tomo.convert import (
    beta_from_transmission,
    delta_from_phase,
    diffusion_from_deff,
    remove_background_quadratic,
)
# note: the function is ``xspeckle.tomo.fbp.fbp``; it is not re-exported here so that the name
# ``xspeckle.tomo.fbp`` keeps meaning the module
from xspeckle.tomo.fbp import FILTERS, GridrecPlan, angle_weights, backproject, fbp_filter, filter_sinogram
# ``reconstruct`` (the function) is re-exported: ``xspeckle.tomo.reconstruct`` then names the function, and the
# module is reached by ``from xspeckle.tomo.reconstruct import ...`` or ``importlib.import_module``
from xspeckle.tomo.reconstruct import reconstruct, reconstruct_file
from xspeckle.tomo.rings import RING_METHODS, column_gain, remove_rings
from xspeckle.tomo.sinogram import DC_METHODS, convert_360_to_180, estimate_center_360, is_full_turn, remove_offset_tilt

__all__ = [
    "DC_METHODS",
    "FILTERS",
    "RING_METHODS",
    "column_gain",
    "convert_360_to_180",
    "estimate_center_360",
    "is_full_turn",
    "remove_offset_tilt",
    "remove_rings",
    "GridrecPlan",
    "angle_weights",
    "backproject",
    "beta_from_transmission",
    "delta_from_phase",
    "diffusion_from_deff",
    "fbp_filter",
    "filter_sinogram",
    "find_center",
    "find_center_pair",
    "opposite_pair",
    "reconstruct",
    "reconstruct_file",
    "remove_background_quadratic",
]
