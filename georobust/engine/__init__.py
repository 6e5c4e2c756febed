"""The machinery attacks, geometry and defences run on, above validation and results: :mod:`.pgd` (the one PGD
kernel and its per-sample worst-case tracker), :mod:`.oracle` (label-only access with exact query counting),
:mod:`.decision` (the decision-based attack framework), :mod:`.protocol` (the attack protocol: registration,
timing, captured parameters, the verified result, the log). It never imports a method. See ARCHITECTURE.md.
"""
