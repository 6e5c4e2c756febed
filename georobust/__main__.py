"""``python -m georobust``: the ``georobust`` command (also what ``torchrun -m georobust`` starts)."""

from .cli import main

main()
