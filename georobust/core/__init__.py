"""The lowest layer: tensor maths and the concepts every other layer names, with no model in sight.

:mod:`.ops` (broadcasting, norms, steepest directions, projections, the random start, generators),
:mod:`.losses` (CE, C&W margin, DLR and their input gradients), :mod:`.dct`, :mod:`.options` (the one option
parser), :mod:`.threat` (threat models), :mod:`.tasks` (what a model outputs and how success is judged),
:mod:`.modes` (train/eval modes), :mod:`.autoload`. It imports only :mod:`georobust.errors` and torch; the
machinery that runs models (the PGD kernel, the label oracle, the decision-attack framework, the attack
protocol) is one layer up, in :mod:`georobust.engine`. See ARCHITECTURE.md.
"""
