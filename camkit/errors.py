"""camkit's user-error types.

Every error caused by what the caller passed (a layer name, a shape, a
dtype, a file, a missing optional package) is an :class:`InputError`, a
``ValueError`` whose message names the problem. The command line reports
these in one line; any other exception is a bug in camkit and keeps its
traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message says what was wrong and, where it can, what to do."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


class DependencyError(InputError, ImportError):
    """An optional package is needed for this feature (also an ``ImportError``)."""
