"""The Lua scripts of the dispatcher, each in a file of this folder, and the one way to run them.

Files. A script is ``<name>.lua``; a fragment (Lua shared by several scripts) is
``_<fragment>.lua``. Each file starts with a comment naming what it does, one
``-- KEYS[n] ...`` line per key and one ``-- ARGV[n] ...`` line per argument
(``KEYS[n..]``/``ARGV[n..]`` for a variable tail), and ``-- Returns: ...``
(tests/store/test_lua_scripts.py holds every file to it). The folder ships as package data.

Includes. Lua in Redis has no ``require``: a line ``--#include <fragment>`` is replaced, when
the script is loaded, by the text of ``_<fragment>.lua`` (fragments include nothing), so each
fragment exists in one file: the wrong-type guard (``_type_guard.lua``), the timeline append
(``_timeline.lua``), the throughput counter (``_throughput.lua``), RQ's structures
(``_rq_enqueue.lua``, ``_rq_where.lua``, ``_rq_place.lua``), the outbox's next body
(``_outbox_promote.lua``). A fragment defines local functions, except the guard, which runs in
place: a script that checks its keys' types declares ``local KEY_TYPES = {'hash', ...}`` (the
Redis type of KEYS[1], KEYS[2], ...) and includes ``type_guard`` before it writes anything;
the runner reads the same line to name the key of a refusal
(:class:`dispatcher.store.wrongtype.WrongKeyTypeError`).

Running. :func:`script` loads a file once per process (importlib.resources, so it works from
a wheel) and returns a :class:`LuaScript`; calling it sends ``EVALSHA``, never the script's
text. A server without the script (restarted, failed over, ``SCRIPT FLUSH``) answers
``NOSCRIPT``: then ``SCRIPT LOAD`` and ``EVALSHA`` again, pipelined in one round trip, once.
On a pipeline (MULTI or not) the call is queued as ``EVALSHA`` and the script registered with
the pipeline, which loads the missing ones before it executes (redis-py's ``Script``).
redis-py's ``Script`` is not used for plain calls: on NOSCRIPT it spends two round trips
(SCRIPT LOAD, then EVALSHA) where one does, and it cannot carry a ``WAIT`` in the same round
trip (:meth:`LuaScript.followed_by`, for dispatcher.store.replication). Works alike on any
connection of store/connection.py (Sentinel, TLS) and on fakeredis (with Lua).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from dispatcher.store.wrongtype import key_types_checked

__all__ = ["INCLUDE", "LuaScript", "load_all", "read", "script"]

INCLUDE = re.compile(r"^--#include ([a-z0-9_]+)[ \t]*$", re.MULTILINE)
"""A line of a script that the fragment ``_<group 1>.lua`` replaces."""

_KEY_TYPES = re.compile(r"^local KEY_TYPES = \{([^}]*)\}$", re.MULTILINE)
_GUARD = "--#include type_guard"


@dataclass(frozen=True, slots=True)
class LuaScript:
    """One script, its fragments included: call it with a client (or a pipeline), its keys
    and its arguments."""

    name: str
    source: str  # what Redis runs: the file with its fragments in place
    sha: str
    key_types: tuple[str, ...]  # of KEYS[1..n], checked before it writes; () when unchecked

    def __call__(
        self,
        client: Redis | Pipeline,
        keys: Sequence[str],
        args: Sequence[Any] = (),
        *,
        integration_id: str | None = None,
    ) -> Any:
        """The script's answer. A refusal of its type guard is raised as WrongKeyTypeError
        naming the key (and ``integration_id`` when given); on a pipeline the call is only
        queued (its answer, or error, comes with ``execute()``)."""
        if isinstance(client, Pipeline):
            return Script(client, self.source)(keys, args, client=client)
        with self.checked(keys, integration_id):
            try:
                return client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                answer = self._round_trip(client, keys, args, (), load=True)[0]
                if isinstance(answer, Exception):
                    raise answer from None
                return answer

    def followed_by(
        self,
        client: Redis,
        keys: Sequence[str],
        args: Sequence[Any],
        *commands: Sequence[Any],
        repeated: list[list[Any]] | None = None,
    ) -> list[Any]:
        """Run the script, then ``commands`` (each a command's words, e.g. ``("WAIT", 1,
        1000)``), on one connection in one round trip (two when the server lacks the script).
        Their replies, the script's answer first; errors are returned, not raised, so that
        the caller judges each (:meth:`checked` names a wrong-type key).

        When the server lacked the script, ``commands`` ran twice (the first time after the
        NOSCRIPT): their first replies are appended to ``repeated``, for a caller whose
        command moves something (a job taken off a queue) to account for both. The second
        round loads the scripts that ``commands`` run too (a server that lost one lost them
        all), so that none of them meets NOSCRIPT again and is run a third time by its
        caller's own retry."""
        replies = self._round_trip(client, keys, args, commands, load=False)
        if isinstance(replies[0], NoScriptError):
            if repeated is not None:
                repeated.append(replies[1:])
            replies = self._round_trip(client, keys, args, commands, load=True)
        return replies

    def checked(
        self, keys: Sequence[str], integration_id: str | None = None
    ) -> AbstractContextManager[None]:
        """Around a run: the type guard's refusal raised as WrongKeyTypeError naming the key."""
        if not self.key_types:
            return nullcontext()
        return key_types_checked(keys, self.key_types, integration_id=integration_id)

    def _round_trip(
        self,
        client: Redis,
        keys: Sequence[str],
        args: Sequence[Any],
        commands: Sequence[Sequence[Any]],
        *,
        load: bool,
    ) -> list[Any]:
        # Not a transaction: SCRIPT LOAD and the script's writes need no MULTI, and WAIT
        # counts the replicas holding this connection's writes, which it follows.
        # Each script once (a command may run this very script again).
        sources = list(dict.fromkeys([self.source, *_sources_run_by(commands)])) if load else []
        with client.pipeline(transaction=False) as pipe:
            for source in sources:
                pipe.script_load(source)
            pipe.evalsha(self.sha, len(keys), *keys, *args)
            for command in commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            replies: list[Any] = pipe.execute(raise_on_error=False)
        # A script Redis cannot compile: its error, not the NOSCRIPT that follows it.
        for loaded in replies[: len(sources)]:
            if isinstance(loaded, Exception):
                raise loaded
        return replies[len(sources) :]


def read(filename: str) -> str:
    """The text of one file of this folder, as shipped (a script or a fragment)."""
    return (resources.files(__name__) / filename).read_text(encoding="utf-8")


@cache
def script(name: str) -> LuaScript:
    """The script ``<name>.lua`` with its fragments included, loaded once per process."""
    source = INCLUDE.sub(_fragment, read(f"{name}.lua"))
    declared = _KEY_TYPES.search(source)
    if (declared is None) != (_GUARD not in read(f"{name}.lua")):
        raise ValueError(f"{name}.lua: KEY_TYPES and '{_GUARD}' go together")
    key_types = tuple(re.findall(r"'([a-z]+)'", declared[1])) if declared else ()
    loaded = LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest(), key_types)
    _BY_SHA[loaded.sha] = loaded
    return loaded


def load_all(client: Redis) -> None:
    """Load every script of this folder into the server, in one round trip: a worker's
    threads then meet no NOSCRIPT on their first jobs, each of which would run the commands
    sent with its script twice (LuaScript.followed_by): a thread took two jobs, or four."""
    names = sorted(
        entry.name.removesuffix(".lua")
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    )
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.script_load(script(name).source)
        pipe.execute()


# Every script loaded so far, by SHA1: what an EVALSHA sent among a round's commands runs.
_BY_SHA: dict[str, LuaScript] = {}


def _sources_run_by(commands: Sequence[Sequence[Any]]) -> list[str]:
    return [
        _BY_SHA[command[1]].source
        for command in commands
        if len(command) > 1 and command[0] == "EVALSHA" and command[1] in _BY_SHA
    ]


def _fragment(include: re.Match[str]) -> str:
    text = read(f"_{include[1]}.lua")
    if INCLUDE.search(text):
        raise ValueError(f"_{include[1]}.lua: a fragment includes nothing")
    return text.rstrip("\n")
