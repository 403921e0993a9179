"""Shared fixtures. Every broker here is a real Mosquitto (devtools.mosquitto).

Fixtures
--------
``broker``
    Session-scoped, synchronous :class:`~devtools.mosquitto.MosquittoBroker`: anonymous, no
    persistence, plain TCP on a free loopback port (``broker.port``). Shared by all tests:
    use unique topics / client ids (``lab_config`` and ``unique`` give you those). Never
    stop or kill it; use ``own_broker`` for that.
``own_broker``
    Factory for a function-scoped broker you may kill/restart:
    ``b = own_broker(persistence=True, users={"u": "pw"}, acl="...", tls=True)``; any
    :class:`MosquittoBroker` keyword works. Stopped and removed after the test.
``unique``
    ``unique("sub")`` -> ``"sub-<test>-<n>"``: an id (letters, digits, ``-``) unique across
    the session, for client ids, node ids and run ids.
``lab_config``
    Factory: ``lab_config(broker, **mqtt_overrides)`` -> a :class:`LabConfig` whose node is
    unique to the call (so every topic is), whose MQTT host/port are ``broker``'s and whose
    journal lives in ``tmp_path``. ``lab_config(broker, port=broker.tls_port, tls_ca=...)``
    overrides MqttConfig fields; ``node=`` and ``journal_path=`` override those.
``tmp_journal``
    An open :class:`~acquisition.journal.Journal` in ``tmp_path`` (closed afterwards).

Autouse: a test that registers step types or instrument kinds of its own (a plug-in) leaves
the registries as it found them. Every async test (function-scoped loop) fails if it leaves asyncio
tasks pending:
after the test and its fixtures are torn down, the loop gets a few iterations (and up to
2 s for tasks already finishing) to settle; the leaked tasks are named in the error and then
cancelled.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from acquisition.config import JournalConfig, LabConfig, MqttConfig
from acquisition.journal import Journal
from devtools.mosquitto import MosquittoBroker, ensure_mosquitto

_counter = itertools.count(1)
_SETTLE_ITERATIONS = 20
_SETTLE_REAL_S = 2.0  # e.g. a paho socket-close callback arriving via call_soon_threadsafe


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the leaked-task check first on every async test, so it is torn down last."""
    for item in items:
        func = getattr(item, "function", None)
        marker = item.get_closest_marker("asyncio")
        loop_scope = marker.kwargs.get("loop_scope") if marker is not None else None
        if loop_scope not in (None, "function"):
            continue  # the check runs in a function-scoped loop: it would look at the wrong one
        if func is not None and inspect.iscoroutinefunction(func):
            names: list[str] = getattr(item, "fixturenames", [])
            if "_no_leaked_tasks" not in names:
                names.insert(0, "_no_leaked_tasks")


@pytest_asyncio.fixture
async def _no_leaked_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    me = asyncio.current_task()

    def leaked() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() if t not in before and t is not me and not t.done()}

    for _ in range(_SETTLE_ITERATIONS):
        await asyncio.sleep(0)
    if pending := leaked():  # give tasks that are already finishing a moment to end
        await asyncio.wait(pending, timeout=_SETTLE_REAL_S)
    left = leaked()
    if not left:
        return
    names = ", ".join(sorted(f"{t.get_name()} ({t.get_coro()!r})" for t in left))
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    pytest.fail(f"{request.node.name} left {len(left)} asyncio task(s) pending: {names}")


@pytest.fixture(autouse=True)
def _registries_restored() -> Iterator[None]:
    from acquisition.kinds import instrument_kinds, restore_kinds
    from acquisition.steps.registry import restore_step_types, step_types

    saved, saved_kinds = dict(step_types()), dict(instrument_kinds())
    yield
    restore_step_types(saved)
    restore_kinds(saved_kinds)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:30] or "t"


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    test = _slug(request.node.name)

    def make(prefix: str = "id") -> str:
        return f"{_slug(prefix)}-{test}-{next(_counter)}"[:60]

    return make


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoBroker]:
    ensure_mosquitto()
    with MosquittoBroker(persistence=False) as b:
        yield b


@pytest.fixture
def own_broker() -> Iterator[Callable[..., MosquittoBroker]]:
    made: list[MosquittoBroker] = []

    def make(**kwargs: Any) -> MosquittoBroker:
        b = MosquittoBroker(**kwargs)
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.close()


@pytest.fixture
def lab_config(tmp_path: Path, unique: Callable[[str], str]) -> Callable[..., LabConfig]:
    def make(
        broker: MosquittoBroker | None = None,
        *,
        node: str | None = None,
        journal_path: Path | None = None,
        **mqtt: Any,
    ) -> LabConfig:
        if broker is not None:
            mqtt.setdefault("host", broker.host)
            mqtt.setdefault("port", broker.port)
        node_id = node or unique("node")
        return LabConfig(
            node=node_id,
            mqtt=MqttConfig(**mqtt),
            journal=JournalConfig(path=journal_path or tmp_path / node_id / "journal.sqlite3"),
        )

    return make


@pytest_asyncio.fixture
async def tmp_journal(tmp_path: Path) -> AsyncIterator[Journal]:
    journal = await Journal.open(tmp_path / "journal" / "journal.sqlite3")
    try:
        yield journal
    finally:
        await journal.close()
