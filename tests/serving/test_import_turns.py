"""Imports take turns while models load (`modelyard.imports`).

Two threads importing at once can hand each other half-initialised modules, so a
model's load on the event loop holds the turn to import in each of its steps, a thread
holds it under `importing()`, and neither is held while a load waits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from modelyard.imports import ImportTurnExecutor, importing, in_turns


def hold_the_turn_in_a_thread(seconds: float) -> tuple[threading.Thread, threading.Event]:
    """A thread that holds the turn for ``seconds``; the event is set once it has it."""
    holding = threading.Event()

    def hold() -> None:
        with importing():
            holding.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    return thread, holding


def try_the_turn_in_a_thread() -> tuple[threading.Thread, list[float]]:
    """A thread that takes the turn once ``start`` is called; when it got it, in ``got``."""
    got: list[float] = []

    def take() -> None:
        with importing():
            got.append(time.monotonic())

    return threading.Thread(target=take), got


async def test_a_load_step_waits_while_a_thread_imports() -> None:
    thread, holding = hold_the_turn_in_a_thread(0.3)
    holding.wait(5)
    began = time.monotonic()
    stepped: list[float] = []

    async def load() -> str:
        stepped.append(time.monotonic())
        return "loaded"

    assert await in_turns(load()) == "loaded"
    thread.join()
    assert stepped[0] - began >= 0.25


async def test_a_thread_imports_while_a_load_waits_and_not_while_it_steps() -> None:
    waiting = asyncio.Event()
    go_on = asyncio.Event()
    steps: list[tuple[float, float]] = []

    async def load() -> None:
        start = time.monotonic()
        time.sleep(0.2)  # a step that imports: the turn is held throughout
        steps.append((start, time.monotonic()))
        waiting.set()
        await go_on.wait()  # a wait: the turn is free

    task = asyncio.ensure_future(in_turns(load()))
    await asyncio.sleep(0)  # the first step runs, holding the turn
    thread, got = try_the_turn_in_a_thread()
    thread.start()
    await waiting.wait()
    await asyncio.to_thread(thread.join, 5)
    # The thread got the turn after the step let go of it, while the load still waits.
    assert got and got[0] >= steps[0][1]
    assert not task.done()
    go_on.set()
    await task


async def test_a_load_that_waits_holds_up_no_other() -> None:
    order: list[str] = []

    async def slow() -> None:
        order.append("slow begins")
        await asyncio.sleep(0.3)
        order.append("slow ends")

    async def quick() -> None:
        order.append("quick")

    await asyncio.gather(in_turns(slow()), in_turns(quick()))
    assert order == ["slow begins", "quick", "slow ends"]


async def test_errors_and_cancellations_reach_the_load_with_the_turn() -> None:
    class Corrupt(Exception):
        pass

    async def failing() -> None:
        await asyncio.sleep(0)
        raise Corrupt("checksum of layer 3 is wrong")

    with pytest.raises(Corrupt, match="layer 3"):
        await in_turns(failing())

    cleaned: list[str] = []

    async def waiting_forever(where: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # a cleanup that awaits, as an unload does
            cleaned.append(where)
            raise

    # Cancelled while it waits.
    task = asyncio.ensure_future(in_turns(waiting_forever("waiting")))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["waiting"]

    # Cancelled while its next step waits for a thread to let go of the turn: the
    # cancellation lands in that step, once the thread is done.
    task = asyncio.ensure_future(in_turns(waiting_forever("after the thread")))
    await asyncio.sleep(0.05)
    thread, holding = hold_the_turn_in_a_thread(0.3)
    await asyncio.to_thread(holding.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    assert cleaned == ["waiting"]  # the load has not stepped: the thread has the turn
    with pytest.raises(asyncio.CancelledError):
        await task
    thread.join()
    assert cleaned == ["waiting", "after the thread"]


async def test_what_a_load_hands_the_default_executor_imports_in_its_turn() -> None:
    executor = ImportTurnExecutor(thread_name_prefix="test-turns")
    asyncio.get_running_loop().set_default_executor(executor)

    def a_runtime_loading_on_a_thread() -> float:
        time.sleep(0.3)
        return time.monotonic()

    async def load() -> float:
        return await asyncio.to_thread(a_runtime_loading_on_a_thread)

    async def contended(call: Callable[[], Awaitable[float]]) -> tuple[float, float]:
        task = asyncio.ensure_future(call())
        await asyncio.sleep(0.1)  # the call is on its thread
        thread, got = try_the_turn_in_a_thread()
        thread.start()
        done = await task
        await asyncio.to_thread(thread.join, 5)
        return done, got[0]

    # Handed over by a load: the other thread waits until the runtime's call is done.
    done, got = await contended(lambda: in_turns(load()))
    assert got >= done

    # So it does for a task the load starts and waits on (a warm-up call's queue).
    async def load_through_a_task() -> float:
        return await asyncio.ensure_future(load())

    done, got = await contended(lambda: in_turns(load_through_a_task()))
    assert got >= done
    # Handed over by anything else (a feature query, a metrics scrape): it does not.
    done, got = await contended(load)
    assert got < done
    # Nor by a task that a load started (a refresh loop), once the load is over.
    started: list[asyncio.Task[float]] = []

    async def starts_a_task() -> None:
        started.append(asyncio.ensure_future(load()))

    await in_turns(starts_a_task())
    done, got = await contended(lambda: started[0])
    assert got < done
