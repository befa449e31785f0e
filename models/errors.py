"""Errors a user can cause. The CLI prints ``str(exc)`` as one line and exits with ``exit_code``."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, flag, device, missing optional library). Message must be one clear line."""

    exit_code = 2


class BundleError(UserError):
    """A bundle folder is missing, broken, of an unknown version, or does not match the code."""


class CheckpointError(UserError):
    """A foreign checkpoint (.pkl / .pt / .tflite) cannot be read safely or is not what it claims."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""
