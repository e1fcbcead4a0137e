"""The Lua scripts in files (dispatcher/store/lua): every file documents its KEYS, ARGV and
answer, every script is used and every fragment included, and the runner sends EVALSHA,
loading a script the server lost (NOSCRIPT) on its own, on plain connections, pipelines and
fakeredis."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from redis import Redis

from dispatcher.store import lua
from dispatcher.store.keys import Keys
from dispatcher.store.leases import WriteLeases
from dispatcher.store.results import Outbox
from dispatcher.store.wrongtype import WrongKeyTypeError

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(f.name for f in resources.files(lua).iterdir() if f.name.endswith(".lua"))
SCRIPTS = [name.removesuffix(".lua") for name in FILES if not name.startswith("_")]
FRAGMENTS = [name.removesuffix(".lua")[1:] for name in FILES if name.startswith("_")]
INTEGRATION = "greenhouse:L1"


def _header(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("--") or line.startswith("--#include"):
            break
        lines.append(line)
    return lines


def _documented(header: list[str], table: str) -> tuple[set[int], int | None]:
    """The indexes a header documents one by one, and where its open range starts."""
    single, tail = set(), None
    for line in header:
        if found := re.match(rf"-- {table}\[(\d+)\] ", line):
            single.add(int(found[1]))
        elif found := re.match(rf"-- {table}\[(\d+)\.\.", line):
            tail = int(found[1]) if tail is None else min(tail, int(found[1]))
    return single, tail


def test_the_folder_holds_scripts_and_fragments() -> None:
    assert len(SCRIPTS) >= 20
    assert {"type_guard", "timeline", "throughput"} <= set(FRAGMENTS)


@pytest.mark.parametrize("filename", FILES)
def test_every_file_documents_its_keys_argv_and_answer(filename: str) -> None:
    text = lua.read(filename)
    header = _header(text)
    assert header, f"{filename}: no comment at the top"
    assert any(re.match(r"-- KEYS[\[ ]", line) for line in header), f"{filename}: no KEYS line"
    assert any(re.match(r"-- ARGV[\[ ]", line) for line in header), f"{filename}: no ARGV line"
    assert any(line.startswith("-- Returns: ") for line in header), f"{filename}: no Returns"
    if filename.startswith("_"):
        return
    # A script: every KEYS[n] and ARGV[n] its own code names is on a line of the header.
    code = "\n".join(line for line in text.splitlines()[len(header) :])
    code = re.sub(r"--[^\n]*", "", code)
    for table in ("KEYS", "ARGV"):
        single, tail = _documented(header, table)
        for index in sorted({int(n) for n in re.findall(rf"{table}\[(\d+)\]", code)}):
            assert index in single or (tail is not None and index >= tail), (
                f"{filename}: {table}[{index}] is used but not documented in its header"
            )


def test_every_script_is_used_by_the_code_and_every_fragment_by_a_script() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "dispatcher").rglob("*.py"))
    used = set(re.findall(r'\bscript\("([a-z0-9_]+)"\)', code))
    assert used == set(SCRIPTS), (
        f"unused script files: {sorted(set(SCRIPTS) - used)}; "
        f"scripts without a file: {sorted(used - set(SCRIPTS))}"
    )
    included = {name for s in SCRIPTS for name in lua.INCLUDE.findall(lua.read(f"{s}.lua"))}
    assert included == set(FRAGMENTS), f"fragments never included: {set(FRAGMENTS) - included}"


def test_no_code_sends_a_script_by_its_text() -> None:
    # EVAL of a whole script: its text on every call. Only the runner talks to Redis's
    # script commands.
    for path in (ROOT / "dispatcher").rglob("*.py"):
        if path.parent.name == "lua":
            continue
        text = path.read_text()
        assert not re.search(r"\.eval\(|\.evalsha\(|register_script\(|redis\.call", text), path


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_fragment_is_included_where_referenced(name: str) -> None:
    raw = lua.read(f"{name}.lua")
    loaded = lua.script(name)
    # Each include line replaced, in place, by its fragment's text; nothing else changed.
    pieces = lua.INCLUDE.split(raw)
    expected = "".join(
        lua.read(f"_{piece}.lua").rstrip("\n") if odd else piece
        for odd, piece in ((i % 2 == 1, p) for i, p in enumerate(pieces))
    )
    assert loaded.source == expected
    assert not lua.INCLUDE.search(loaded.source)
    guarded = "--#include type_guard" in raw
    assert bool(loaded.key_types) == guarded
    if guarded:
        declared = re.search(r"^local KEY_TYPES = \{(.*)\}$", raw, re.MULTILINE)
        assert declared is not None
        assert loaded.key_types == tuple(re.findall(r"'(\w+)'", declared[1]))


def test_the_type_guard_runs_and_names_the_key(any_redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    key = keys.kombo_writes(INTEGRATION)
    any_redis.set(key, "junk")
    with pytest.raises(WrongKeyTypeError, match=re.escape(key)) as caught:
        WriteLeases(any_redis, keys, 2).acquire(INTEGRATION, "w1", 30)
    assert (caught.value.found, caught.value.expected) == ("string", "zset")
    assert any_redis.get(key) == b"junk"


def _stats(redis: Redis) -> dict[str, int]:
    """Calls per script command since the server started (INFO commandstats)."""
    info: dict[str, Any] = redis.info("commandstats")
    return {
        name: int(info.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("eval", "evalsha", "script|load")
    }


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in before}


def _outbox(redis: Redis, namespace: str) -> Outbox:
    return Outbox(redis, namespace, f"{namespace}-results")


def _submit_and_write(outbox: Outbox, order_id: str) -> None:
    body = {"status": "COMPLETED", "score": 90, "result_url": "https://vendor.example/r/1"}
    outbox.submit(INTEGRATION, order_id, body)
    record = outbox.get(INTEGRATION, order_id)
    assert record is not None
    assert outbox.begin(record, record.job_id) == "begun"
    assert outbox.mark_written(record, record.job_id, []) == "written"


@pytest.mark.redis
def test_a_script_the_server_forgot_is_loaded_again(redis: Redis, namespace: str) -> None:
    outbox = _outbox(redis, namespace)
    _submit_and_write(outbox, "O1")
    redis.script_flush()  # a restart, a failover to a replica that never saw the script
    _submit_and_write(outbox, "O2")
    assert outbox.get(INTEGRATION, "O2").state == "written"  # type: ignore[union-attr]
    # The same after a flush inside a pipeline (MULTI), and with a command riding after it.
    release = lua.script("lease_release")
    redis.script_flush()
    redis.set("lease", "me")
    with redis.pipeline(transaction=True) as pipe:
        release(pipe, ["lease"], ["me"])
        pipe.get("lease")
        assert pipe.execute() == [1, None]
    redis.script_flush()
    redis.set("lease", "me")
    assert release.followed_by(redis, ["lease"], ["me"], ("EXISTS", "lease")) == [1, 0]


@pytest.mark.redis
def test_commands_that_ran_before_the_script_was_loaded_are_reported_too(redis: Redis) -> None:
    # A job's success rides after its last step's script with the take of the thread's next
    # job. A server that lost the step's script but has the take's (loaded again meanwhile by
    # another thread) runs the take in the NOSCRIPT round too: both takes are reported, so
    # that both taken jobs run (none is left in RQ's intermediate list).
    from dispatcher.store.replication import run_script

    release = lua.script("lease_release")
    redis.rpush("jobs", "J1", "J2", "J3")
    redis.script_flush()
    redis.set("lease", "me")
    replies: list[list[Any]] = []
    answer = run_script(
        redis, release, ["lease"], ["me"], last=[("LMOVE", "jobs", "taken", "LEFT", "RIGHT")],
        on_last=replies.append,
    )  # fmt: skip
    assert answer == 1
    assert replies == [[b"J1"], [b"J2"]]
    assert redis.lrange("taken", 0, -1) == [b"J1", b"J2"]


@pytest.mark.redis
def test_the_second_round_loads_the_scripts_its_commands_run(redis: Redis) -> None:
    # A server that lost the step's script lost the success's too: a second round that
    # loaded only the first left the success to meet NOSCRIPT again, and its own retry then
    # sent the thread's take a third and a fourth time (four jobs in one thread's hands).
    release = lua.script("lease_release")
    renew = lua.script("lease_renew")
    redis.set("lease", "me")
    redis.set("other", "me")
    redis.script_flush()
    words = ("EVALSHA", renew.sha, 1, "other", "me", 60_000)  # another script's run
    answer, renewed = release.followed_by(redis, ["lease"], ["me"], words)
    assert (answer, renewed) == (1, 1)
    assert 0 < redis.pttl("other") <= 60_000
    assert redis.script_exists(release.sha, renew.sha) == [True, True]


@pytest.mark.redis
def test_load_all_loads_every_script_in_one_round_trip(redis: Redis) -> None:
    redis.script_flush()
    lua.load_all(redis)
    names = [f.name[:-4] for f in resources.files(lua).iterdir() if f.name.endswith(".lua")]
    scripts = [lua.script(name) for name in names if not name.startswith("_")]
    assert len(scripts) > 30
    assert all(redis.script_exists(*(s.sha for s in scripts)))


@pytest.mark.redis
def test_a_second_call_sends_evalsha_never_eval(redis: Redis, namespace: str) -> None:
    outbox = _outbox(redis, namespace)
    redis.script_flush()
    before = _stats(redis)
    _submit_and_write(outbox, "O1")  # first use: each script refused (NOSCRIPT), then loaded
    loaded = _delta(before, _stats(redis))
    assert loaded["eval"] == 0
    assert loaded["script|load"] == 3  # submit, begin, written

    before = _stats(redis)
    _submit_and_write(outbox, "O2")
    assert _delta(before, _stats(redis)) == {"eval": 0, "evalsha": 3, "script|load": 0}


def test_scripts_run_on_fakeredis_and_survive_its_script_flush(namespace: str) -> None:
    redis = fakeredis.FakeRedis()
    outbox = _outbox(redis, namespace)
    _submit_and_write(outbox, "O1")
    redis.script_flush()
    _submit_and_write(outbox, "O2")
    # The timeline fragment ran inside both scripts.
    events = [e["event"] for e in outbox.timeline_events(INTEGRATION, "O2")]
    assert events == ["result_submitted", "result_written"]
    release = lua.script("lease_release")
    redis.set("lease", "me")
    with redis.pipeline(transaction=True) as pipe:
        release(pipe, ["lease"], ["me"])
        assert pipe.execute() == [1]


def test_a_fragment_cannot_include_another(monkeypatch: pytest.MonkeyPatch) -> None:
    real = lua.read

    def read(filename: str) -> str:
        if filename == "lease_release.lua":
            return "--#include timeline\n" + real(filename)
        if filename == "_timeline.lua":
            return "--#include throughput\n"
        return real(filename)

    monkeypatch.setattr(lua, "read", read)
    lua.script.cache_clear()
    try:
        with pytest.raises(ValueError, match="a fragment includes nothing"):
            lua.script("lease_release")
    finally:
        monkeypatch.undo()
        lua.script.cache_clear()


@pytest.mark.slow
def test_a_regular_install_ships_the_scripts(tmp_path: Path) -> None:
    # Not editable: the files must come from the package data of the built distribution.
    # Built from a copy: a build/ left in the worktree would be reused by the next build.
    source = tmp_path / "source"
    for folder in ("dispatcher", "handlers"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert sorted(p.name for p in (target / "dispatcher" / "store" / "lua").glob("*.lua")) == FILES
    probe = (
        "import dispatcher.store.lua as lua, dispatcher.store.results, dispatcher.store.reconcile;"
        "print(lua.__file__); print(len(lua.script('outbox_written').source))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target)}, cwd=tmp_path, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    where, size = shown.stdout.split()
    assert where.startswith(str(target)) and int(size) > 1000
