"""The `sam2train` command. Only this package ever exits the process."""

from sam2train.cli.commands import main

__all__ = ["main"]
