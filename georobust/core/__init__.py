"""The shared machinery every method builds on; nothing in it imports an attack, a geometry tool or a defence.

Pure tensor code (no model): :mod:`.ops` (broadcasting, norms, steepest directions, projections, random
starts, generators), :mod:`.losses` (CE, C&W margin, DLR and their input gradients), :mod:`.dct`,
:mod:`.options` (the one option parser), :mod:`.threat` (threat models) and :mod:`.tasks` (what a model
outputs and how success is judged). On top of validation and results: :mod:`.pgd` (the one PGD kernel),
:mod:`.oracle` (label-only access with query counting), :mod:`.decision` (the decision-attack framework),
:mod:`.protocol` (the attack protocol: timing, parameters, verified result, log). See ARCHITECTURE.md.
"""
