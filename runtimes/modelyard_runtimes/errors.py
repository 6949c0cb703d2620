"""How errors raised by a model's own code reach the client.

The rule, the same online and in batch:
- ``BadRequest`` (or any ``mlserver.errors.MLServerError``, which keeps its status)
  raised by the user's code means the request is at fault: a 400 / INVALID_ARGUMENT
  carrying the user's message;
- anything else is the model's fault: ``modelyard.errors.ModelCodeFailed``, which the
  server answers as every unexpected error, a 500 / INTERNAL whose message names the
  request id and not the exception (whose text may hold a library's internals or a
  path of the server); the log has the traceback under that id. A batch run reports
  the step and the exception for each row it failed on.

A plain ``ValueError`` is a 500 on purpose: numpy, pandas and scikit-learn raise it
for bugs as much as for bad input, and a 400 would hide a broken model from alerts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import status
from mlserver.errors import InferenceError, MLServerError

from modelyard.errors import ModelCodeFailed

T = TypeVar("T")


class BadRequest(ValueError):
    """Raise this from a predictor's code when the request is wrong; the client gets
    a 400 with the message. It is a ``ValueError`` so code run outside a server may
    catch it as one."""


class ModelError(MLServerError):
    """The runtime's own reason a model failed on a request (no answer, an answer that
    is not a tensor, ...): a 500 carrying it."""

    def __init__(self, msg: str):
        super().__init__(msg, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


class FeatureSourceError(MLServerError):
    """The features database could not answer: a 500 naming the source."""

    def __init__(self, msg: str):
        super().__init__(msg, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


def call_user(model: str, where: str, fn: Callable[..., T], *args: Any) -> T:
    """Run one step of a model's own code, turning what it raises into a V2 error."""
    try:
        return fn(*args)
    except (MLServerError, ModelCodeFailed):
        raise
    except BadRequest as e:
        raise InferenceError(f"model '{model}': {e}") from e
    except Exception as e:
        # Logged by whoever answers it: the server, under the request's id.
        raise ModelCodeFailed(f"model '{model}': {where} raised {type(e).__name__}: {e}") from e
