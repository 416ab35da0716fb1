"""The Lua sandbox: escapes refused, runaway scripts stopped, JSON conversion rules."""

from __future__ import annotations

import pytest

from nimsforest.forest.sandbox import (
    LimitExceeded,
    LuaLimits,
    LuaSandbox,
    ScriptError,
    ScriptLoadError,
)

LIMITS = LuaLimits(instructions=2_000_000, seconds=1.0, memory=8 * 1024 * 1024)


def sandbox(body: str, logs: list[str] | None = None) -> LuaSandbox:
    return LuaSandbox(body, "t.lua", LIMITS, (logs if logs is not None else []).append)


def run(body: str, value: object = None) -> object:
    return sandbox(f"function process(input)\n{body}\nend").call({} if value is None else value)


@pytest.mark.parametrize(
    "name",
    [
        "os.execute",
        "os.getenv",
        "os.remove",
        "os.exit",
        "io",
        "debug",
        "package",
        "require",
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "collectgarbage",
        "python",
        "string.dump",
    ],
)
def test_dangerous_globals_are_absent(name: str) -> None:
    # looked up by a computed name, which no check of the source can see: absent at run time
    table, _, key = name.rpartition(".")
    assert run(f"return {{tostring({table or '_G'}['{key[:1]}' .. '{key[1:]}'])}}") == ["nil"]


@pytest.mark.parametrize(
    ("body", "shown", "line"),
    [
        ("local x = 1\nreturn {os.execute('rm -rf /')}", "os.execute", 3),
        ("return {io.open('/etc/passwd')}", "io.open", 2),
        ("local m = require('socket')\nreturn {}", "require", 2),
        ("return {python}", "python", 2),
    ],
)
def test_a_script_reading_a_global_the_sandbox_lacks_is_refused_at_load(
    body: str, shown: str, line: int
) -> None:
    with pytest.raises(ScriptLoadError, match=rf"t.lua line {line}: uses {shown}, which the sandbox") as e:
        run(body)
    assert e.value.line == line


def test_globals_the_script_defines_or_declares_local_are_its_own() -> None:
    script = (
        "local os = {time = function() return 1 end}\n"
        "function helper(x) return x end\n"
        "function process(input) return {t = os.time(), h = helper(2), n = json.encode({})} end"
    )
    assert sandbox(script).call({}) == {"t": 1, "h": 2, "n": "[]"}


@pytest.mark.parametrize(
    "escape",
    [
        "return {getmetatable('').__index.dump}",  # the string metatable is hidden
        "return {tostring(getmetatable(log).__index)}",  # lupa's Python-object metatable too
        "return {log.__class__}",  # Python attributes are not reachable
        "return {json.encode.__globals__}",
    ],
)
def test_escape_routes_are_refused(escape: str) -> None:
    with pytest.raises(ScriptError):
        run(escape)


def test_bytecode_cannot_be_loaded_or_dumped() -> None:
    with pytest.raises(ScriptError):
        run("return {string.dump(function() end)}")
    with pytest.raises(ScriptError):  # a computed name: absent at run time
        run("return {_G['lo' .. 'ad']('\\27Lua')}")
    with pytest.raises(ScriptLoadError, match="uses load"):  # a plain one: refused at load
        run("return {load('\\27Lua')}")


@pytest.mark.parametrize(
    "body",
    [
        "while true do end",
        # pcall cannot swallow the stop
        "while true do pcall(function() while true do end end) end",
        "return xpcall(function() error('x') end, function() while true do end end)",
        "local c = coroutine.wrap(function() while true do end end) c()",
        (
            "local c = coroutine.create(function() while true do end end) "
            "coroutine.resume(c) while true do end"
        ),
        "local function f() return f() end return f()",  # endless tail call
    ],
)
def test_endless_loops_are_stopped(body: str) -> None:
    with pytest.raises(LimitExceeded, match="instruction limit"):
        run(body)


def test_memory_is_capped() -> None:
    with pytest.raises(LimitExceeded, match="memory limit"):
        run("local t = {} for i = 1, 1e8 do t[i] = i end")
    with pytest.raises(LimitExceeded, match="memory limit"):
        run("return {string.rep('x', 1e9)}")


def test_finalizers_are_refused() -> None:
    # Lua runs __gc without hooks, so an endless finalizer would escape the limit.
    with pytest.raises(ScriptError, match="__gc"):
        run("setmetatable({}, {__gc = function() while true do end end})")


def test_catastrophic_patterns_are_refused_but_normal_ones_work() -> None:
    with pytest.raises(ScriptError, match="too costly"):
        run("return {string.find(string.rep('a', 2000), '.-.-.-b')}")
    assert run("return {('hello world'):match('^(%w+)')}") == ["hello"]
    assert run("local n = 0 for w in ('a b c'):gmatch('%a+') do n = n + 1 end return {n}") == [3]


def test_the_runtime_stays_usable_after_a_stop() -> None:
    s = sandbox(
        "n = 0\nfunction process(i) n = n + 1\n"
        "if i.loop then while true do end end return {n = n} end"
    )
    with pytest.raises(LimitExceeded):
        s.call({"loop": True})
    assert s.call({}) == {"n": 2}


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ScriptLoadError) as err:
        sandbox("function process(input)\n  local x = = 1\nend")
    assert str(err.value).startswith("t.lua line 2:")


def test_missing_process_and_runaway_top_level_are_load_errors() -> None:
    with pytest.raises(ScriptLoadError, match="process"):
        sandbox("x = 1")
    with pytest.raises(ScriptLoadError, match="instruction limit"):
        sandbox("while true do end")


def test_runtime_error_names_file_and_line() -> None:
    with pytest.raises(ScriptError, match=r"^t.lua:3: attempt to index a nil value"):
        run("local x = nil\nreturn x.y")


def test_nil_drops_and_non_tables_are_errors() -> None:
    assert run("return nil") is None
    with pytest.raises(ScriptError, match="not a string"):
        run("return 'x'")


def test_arrays_and_objects_keep_their_kind() -> None:
    out = run(
        "return {given_list = input.l, given_obj = input.o, empty_built = {}, "
        "empty_obj = json.object(), list = {1, 2, 3}, obj = {a = 1}, mixed = {1, x = 2}}",
        {"l": [], "o": {}},
    )
    assert out == {
        "given_list": [],
        "given_obj": {},
        "empty_built": [],  # an unmarked empty table is an array
        "empty_obj": {},
        "list": [1, 2, 3],
        "obj": {"a": 1},
        "mixed": {"1": 1, "x": 2},
    }


def test_numbers_round_trip() -> None:
    out = run(
        "return {i = input.i + 1, f = input.f * 2, big = input.big}",
        {"i": 41, "f": 1.25, "big": 2**53},
    )
    assert out == {"i": 42, "f": 2.5, "big": 2**53}
    assert isinstance(out["i"], int)  # type: ignore[index]


def test_unencodable_results_are_errors() -> None:
    with pytest.raises(ScriptError, match="cannot be encoded"):
        run("return {f = function() end}")
    with pytest.raises(ScriptError, match="cannot be encoded"):
        run("local t = {} t.self = t return t")
    with pytest.raises(ScriptError, match="NaN"):
        run("return {x = 0/0}")


def test_helpers() -> None:
    logs: list[str] = []
    s = sandbox(
        "function process(i)\n"
        "  log('seen', i.name, {a = 1})\n"
        "  local d = json.decode('{\"k\": [1, 2]}')\n"
        "  local bad, err = json.decode('{')\n"
        "  return {enc = json.encode({b = {}}), k = d.k[2], bad = bad == nil, err = err ~= nil,\n"
        "          yes = contains('Chief CTO', 'CTO'), no = contains('x', 'y'),\n"
        "          nilsafe = contains(nil, 'x')}\n"
        "end",
        logs,
    )
    out = s.call({"name": "jane"})
    assert out == {
        "enc": '{"b":[]}',
        "k": 2,
        "bad": True,
        "err": True,
        "yes": True,
        "no": False,
        "nilsafe": False,
    }
    assert logs == ['seen jane {"a":1}']


def test_a_script_has_the_clock_of_os_and_nothing_else() -> None:
    # the Go original's chat parser stamps its messages with os.date / os.time
    got = run('return {t = os.date("!%Y", 0), n = os.time({year=2026, month=1, day=1, hour=0}) > 0, '
              "d = os.difftime(2, 1), c = os.clock() >= 0}")
    assert got == {"t": "1970", "n": True, "d": 1, "c": True}
    with pytest.raises(ScriptLoadError, match=r"uses os.getenv, which the sandbox does not have"):
        sandbox("function process(i) return {os.getenv('HOME')} end")
