"""Geometry of decision boundaries: Hessians, curvature, cross-sections, subspaces, normals.

Every submodule not starting with ``_`` is imported here (registering its analyses).
"""

from ..core.autoload import import_submodules
from .cross_section import cross_section
from .curvature import boundary_curvature, curvature_profile
from .hessian import hessian_eigs, lanczos
from .normals import boundary_normals, normal_spectrum
from .subspace import noise_robustness, subspace_deepfool, subspace_robustness
from .universal_geometry import universal_geometry

MODULES = import_submodules(__name__, __path__)

__all__ = ["boundary_curvature", "boundary_normals", "cross_section", "curvature_profile", "hessian_eigs", "lanczos",
           "noise_robustness", "normal_spectrum", "subspace_deepfool", "subspace_robustness", "universal_geometry"]
