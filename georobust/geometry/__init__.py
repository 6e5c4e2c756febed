"""Geometry of decision boundaries: Hessians, curvature, cross-sections, subspaces, normals.

Every submodule not starting with ``_`` is imported here (registering its analyses).
"""

from .._autoload import import_submodules

MODULES = import_submodules(__name__, __path__)
