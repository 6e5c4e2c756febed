"""The report of an evaluation, read in a browser: ``georobust report RESULTS_DIR [RESULTS_DIR_B] -o report.html``.

One self-contained HTML file (Jinja2 template, figures as data URIs, no script, nothing fetched) written from the
JSON + safetensors that ``evaluate``, ``attack``, ``analyse``, ``universal`` and ``train`` save: the model and the
data, the robust-accuracy tables and curves per threat model, the alarms of the evaluation with their
explanation, per-attack timings, example images, geometry figures, and the command that produced each part
(``commands.json``, :mod:`georobust.report.commands`). Two folders give a comparison side by side; results of
different models need ``compare=True`` (CLI ``--compare``). A composition-layer package, like the CLI.
"""

from .build import Cell, build, render, write_report
from .collect import Part, Results, collect, model_key
from .commands import COMMANDS_FILE, command_line, record

__all__ = ["Cell", "build", "render", "write_report", "Part", "Results", "collect", "model_key", "COMMANDS_FILE",
           "command_line", "record"]
