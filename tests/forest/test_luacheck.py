"""The globals check (forest/luacheck.py) on frozen scripts: what Lua's own compiler says
a script reads from its environment, with the scopes of the compiler (locals, parameters,
loops, upvalues, `local _ENV`), and the bytecode reader on the installed Lua."""

from __future__ import annotations

import pytest

from nimsforest.forest.luacheck import DumpFormatError, GlobalUse, missing_globals, read_dump

HAVE = ("print", "pairs", "string", "setmetatable", "rawget", "os", "table", "type")
LONG = "a_name_longer_than_forty_characters_" * 2  # no short string: LOADK + GETTABLE


def found(source: str, have: tuple[str, ...] = HAVE) -> list[tuple[str, int | None]] | None:
    uses = missing_globals(source, have)
    return None if uses is None else [(u.shown, u.line) for u in uses]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # what the sandbox refuses, shown with its field and line
        ("local x = 1\nreturn {io.open('/etc/passwd')}", [("io.open", 2)]),
        ("return io['open'], io:lines()", [("io.open", 1), ("io.lines", 1)]),  # keys, methods
        ("local m = require('socket')", [("require", 1)]),
        # locals shadow, also a local `os` the script made itself
        ("local io = {open = 1}\nreturn io.open", []),
        ("local a = a", [("a", 1)]),  # declared after its value is evaluated
        ("do local q = 1 end\nreturn q", [("q", 2)]),
        ("repeat local z = 1 until z == w", [("w", 1)]),  # `until` sees the body's locals
        # parameters, loop variables, nested functions and upvalues
        ("for i = 1, n do print(i) end\nprint(i)", [("n", 1), ("i", 2)]),
        ("for k, v in pairs(t) do print(k, v) end", [("t", 1)]),
        ("local function f(x) return f(x - 1) end", []),  # `local function` sees itself
        ("local f = function() return f end", [("f", 1)]),  # a plain local does not
        ("local up = 1\nlocal function outer()\n  return function() return up, down end\nend",
         [("down", 3)]),
        ("local t = {}\nfunction t:m() return self, other end", [("other", 2)]),
        # a global the script assigns anywhere is its own
        ("function helper() return counter end\ncounter = 0", []),
        ("return {[k] = v, x = y}", [("k", 1), ("v", 1), ("y", 1)]),
        # _ENV: a local _ENV makes names fields of that table; _ENV.x is the global x
        ("local _ENV = {print = print}\nprint(io.open)", []),
        ("return _ENV.io.open, _ENV['debug']", [("io.open", 1), ("debug", 1)]),
        ("local e = _ENV\nreturn e.io", [("io", 1)]),
        ("return rawget(_ENV, 'x')", [("_ENV", 1)]),
        ("local function f() local _ENV = {} return io end\nreturn f, io", [("io", 2)]),
        # a name that is no short string, and a function with more than 255 constants
        (f"{LONG} = 1\nreturn {LONG}, other_{LONG}", [(f"other_{LONG}", 2)]),
        ("local t = {" + ",".join(f'"s{i}"' for i in range(300)) + "}\nreturn io.open(t)",
         [("io.open", 2)]),
        ("local t = {" + ",".join(f'"s{i}"' for i in range(300)) + "}\nmine = 1\nreturn mine",
         []),
        # each shown name once, in the order of the lines
        ("function f() return late end\nreturn early, early, late",
         [("late", 1), ("early", 2)]),
        ("goto done ::done:: return nope", [("nope", 1)]),
        ("local a <const> = 1\nlocal b <close> = nil\nreturn a, c", [("c", 3)]),
    ],
)
def test_global_reads(source: str, expected: list[tuple[str, int]]) -> None:
    assert found(source) == expected


def test_the_name_and_what_the_script_wrote() -> None:
    assert missing_globals("return io.open", ()) == (GlobalUse("io", "io.open", 1),)


def test_a_script_lua_cannot_compile_has_no_answer() -> None:
    assert found("function process(") is None
    assert found("return 1 +") is None


def test_the_reader_knows_the_installed_lua_and_refuses_other_dumps() -> None:
    from lupa import lua55

    rt = lua55.LuaRuntime(encoding=None)
    dump = bytes(rt.eval("string.dump(load('local x = 1 return function() return x, y end'))"))
    main = read_dump(dump)  # the whole dump read, nothing left over
    assert len(main.protos) == 1 and main.protos[0].upvalues == [(1, 0), (0, 0)]
    with pytest.raises(DumpFormatError):
        read_dump(dump + b"\x00")
    with pytest.raises(DumpFormatError):
        read_dump(b"\x1bLua\x54" + dump[5:])
    stripped = bytes(rt.eval("string.dump(load('return io.open'), true)"))
    assert read_dump(stripped).lines == []  # no debug info: no lines, still readable
