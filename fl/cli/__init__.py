"""The ``privagg`` command line: parse, call the library, render; no logic of its own.

* :mod:`fl.cli.main` - the argument parser and the subcommands (``run``, ``sweep``, ``audit``,
  ``aggregate``);
* :mod:`fl.cli.console` - terminal rendering: progress bars, the per-round table, plain and JSON
  output modes;
* :mod:`fl.cli.sweep` - privacy-budget experiments (one run per epsilon and seed, the curve);
* :mod:`fl.cli.audit_report` - the guarantee report of ``privagg audit``;
* :mod:`fl.cli.demo` - the one-round secure-aggregation demo of ``privagg aggregate``.
"""

from fl.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
