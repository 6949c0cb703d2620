"""Importing a model's code: a user's class from `file.py:Class` (inside a model folder)
or `package.module:Class`, and one thread at a time.

Two threads importing at once can each hold a module the other needs next. Python
breaks that tie by handing one of them the other's module half-initialised: its
`from x import y` fails with ImportError, and a library that reads an ImportError as
"not installed" (xgboost's scikit-learn support) goes without it for the life of the
process. So while this process loads models, importing takes turns:

- a thread imports under `importing()` (`load_class` does so itself);
- a model's load on the event loop runs through `in_turns`: each of its steps holds the
  turn, and lets go of it while it waits (on a thread, a download, a sleep), so a slow
  load holds up no other;
- what a load hands another thread (`handed_over`) runs under `importing()` too: on
  the loop's default executor (`asyncio.to_thread`, a runtime's `run_in_executor(None,
  ...)`) once the server has made `ImportTurnExecutor` that executor, and on a runtime's
  own thread when it hands its calls over so.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Coroutine, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

# The turn to import. Reentrant: a step that holds it may import a class with
# `load_class`, which takes it again.
_TURN = threading.RLock()


class _Load:
    """A load run by `in_turns`, while it runs."""

    running = True


# The load that the running code belongs to: its own steps, and the tasks they start
# (a warm-up call's queue) for as long as the load runs, but not after (a refresh loop).
_LOAD: ContextVar[_Load | None] = ContextVar("modelyard_load", default=None)
# How often the event loop looks whether a thread has let go of the turn.
TURN_POLL_S = 0.002


@contextmanager
def importing() -> Iterator[None]:
    """Hold the turn to import, on a thread (blocks until it is free)."""
    with _TURN:
        yield


def with_the_turn(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` under `importing()`."""
    with _TURN:
        return fn(*args, **kwargs)


def handed_over(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn``, to run on another thread: under `importing()` when a model's load hands
    it over (a runtime loading on a thread of its own, its warm-up's first call)."""
    load = _LOAD.get()
    if load is None or not load.running:
        return fn
    return functools.partial(with_the_turn, fn)


class _Yielded:
    """What the coroutine driven by `in_turns` yielded (a future it waits on), passed
    to the task, whose answer goes back to the coroutine."""

    def __init__(self, value: Any):
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.value)


async def in_turns(coro: Coroutine[Any, Any, T]) -> T:
    """``coro``'s result, run on the event loop one step at a time, each step holding
    the turn to import. While it waits, the turn is free. A cancellation that lands
    while the next step waits for the turn is thrown into ``coro`` in that step, so its
    own cleanup runs, with the turn, as it would have."""
    send: Any = None
    error: BaseException | None = None
    load = _Load()
    token = _LOAD.set(load)
    try:
        while True:
            while not _TURN.acquire(blocking=False):
                try:
                    await asyncio.sleep(TURN_POLL_S)
                except GeneratorExit:
                    raise
                except BaseException as e:
                    error = error or e
            try:
                yielded = coro.send(send) if error is None else coro.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            finally:
                _TURN.release()
            send, error = None, None
            try:
                send = await _Yielded(yielded)
            except GeneratorExit:
                raise
            except BaseException as e:
                error = e
    finally:
        load.running = False
        _LOAD.reset(token)
        coro.close()


class ImportTurnExecutor(ThreadPoolExecutor):
    """The event loop's default executor in a server: a call a model's load hands it
    (`handed_over`) runs under `importing()`; any other call as it is."""

    def submit(  # type: ignore[override]
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T]:
        return super().submit(handed_over(fn), *args, **kwargs)


class ClassSpecError(ValueError):
    """The spec cannot be resolved; the message says why and how to fix it."""


def is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def load_class(spec: str, folder: Path | None = None) -> type:
    """Resolve ``spec`` to a class.

    ``predictor.py:GenderPredictor`` is loaded from ``folder`` (and must stay inside it);
    ``package.module:Class`` is imported from the environment. Each model folder's file
    is imported under a name of its own, so two folders may both have a `predictor.py`.
    It is imported with the turn to import (`importing()`).
    """
    with _TURN:
        return _load_class(spec, folder)


def _load_class(spec: str, folder: Path | None) -> type:
    module_part, sep, attr = spec.partition(":")
    if not sep or not module_part or not attr:
        raise ClassSpecError(f"{spec!r} is not 'file.py:Class' or 'package.module:Class'")
    if module_part.endswith(".py"):
        if folder is None:
            raise ClassSpecError(f"{spec!r}: a file path needs the model folder")
        path = folder / module_part
        if not is_inside(path, folder):
            raise ClassSpecError(f"{spec!r}: {module_part} is outside the model folder {folder}")
        if not path.is_file():
            raise ClassSpecError(f"{spec!r}: no file {module_part} in {folder}")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        name = f"modelyard_user_{path.stem}_{digest}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ClassSpecError(f"{spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        # The folder is importable while the file runs, for helper modules beside it.
        sys.path.insert(0, str(folder.resolve()))
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ClassSpecError(
                f"{spec!r}: importing {path} failed: {type(e).__name__}: {e}"
            ) from e
        finally:
            sys.path.remove(str(folder.resolve()))
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as e:
            raise ClassSpecError(
                f"{spec!r}: cannot import module {module_part}: {type(e).__name__}: {e}"
            ) from e
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ClassSpecError(f"{spec!r}: {module_part} has no class {attr}")
    return cls
