"""The ``fastcsi`` command line: a thin layer of parsing, progress and printing over the API."""
from fastcsi.cli.app import cli, main

__all__ = ["cli", "main"]
