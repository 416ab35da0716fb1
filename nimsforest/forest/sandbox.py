"""A Lua sandbox for one component's script (lupa, the newest Lua it ships: 5.5 or 5.4).

Each script gets its own Lua runtime whose globals are only:
    assert error ipairs next pairs pcall xpcall rawequal rawget rawlen rawset select
    setmetatable getmetatable tonumber tostring type _VERSION
    string (without dump) table math utf8 coroutine
    os.time os.date os.clock os.difftime (the clock, nothing else of os)
    log(...) print(...) json.encode json.decode json.array json.object contains(s, sub)
There is no io, debug, package, require, load, loadfile, dofile, collectgarbage,
string.dump or the rest of os: scripts cannot load code or bytecode, touch files, run
programs or reach Python.

Every call (including the script's top level when it is loaded) is bounded:
- instructions: a count hook stops the call after `instructions` VM instructions or
  `seconds` of CPU time. Once tripped, every further instruction raises, so pcall cannot
  swallow the stop. Coroutines get the same hook; xpcall runs its handler after
  unwinding (Lua runs message handlers without hooks); __gc metamethods are refused
  (Lua runs finalizers without hooks).
- memory: the runtime's heap is capped at `memory` bytes (lupa's max_memory).
- string patterns (find, match, gmatch, gsub) run in C where no hook can reach; a call
  whose worst case, (subject length)^(quantifiers + 1), exceeds 10^8 steps is refused.
A stopped or failing call raises ScriptError for that one event; the runtime stays usable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lupa

from nimsforest.forest.errors import EventError
from nimsforest.forest.luacheck import missing_globals
from nimsforest.forest.luaconv import ConversionError, Converter

try:  # prefer the newest Lua the installed lupa provides
    from lupa import lua55 as _lua
except ImportError:  # pragma: no cover - older lupa
    from lupa import lua54 as _lua

LUA_VERSION = "{}.{}".format(*_lua.LuaRuntime().lua_version)
PATTERN_WORK_LIMIT = 1e8

log = logging.getLogger("nimsforest.forest.lua")


@dataclass(frozen=True)
class LuaLimits:
    instructions: int = 10_000_000
    seconds: float = 1.0
    memory: int = 64 * 1024 * 1024


class ScriptLoadError(Exception):
    """The script cannot be used (syntax error, a global the sandbox does not have,
    failing top level, no process function). `line` is the script's line, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(message)


class ScriptError(EventError):
    """One call failed: a runtime error, a limit, or an unencodable result."""


class LimitExceeded(ScriptError):
    pass


_PRELUDE = r"""
local G = ...
local sethook, getmetatable_raw, clock = debug.sethook, debug.getmetatable, os.clock
local rawsetmt, rawget, type, error = setmetatable, rawget, type, error
local pcall, select = pcall, select
local pack, unpack = table.pack, table.unpack
local STEP = 1000
local budget, used, deadline, tripped = 0, 0, 0, nil

local function stop() error("nimsforest: " .. tripped, 0) end
local function hook()
  used = used + STEP
  if tripped == nil then
    if used > budget then tripped = "instruction limit"
    elseif clock() > deadline then tripped = "time limit" end
  end
  if tripped ~= nil then sethook(stop, "", 1); stop() end
end

local env = {}
for _, k in ipairs({"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
                    "rawlen", "rawset", "select", "tonumber", "tostring", "type", "_VERSION"}) do
  env[k] = G[k]
end

-- string: the real library (strings share it as their metatable's __index), minus dump,
-- with pattern functions refusing catastrophic backtracking.
local string = string
string.dump = nil
local ogsub = string.gsub
local WORK = G.__pattern_limit
local function guard(name, f, plain_at)
  return function(s, p, ...)
    if type(s) == "number" then s = tostring(s) end
    local plain = plain_at and select(plain_at - 2, ...)
    if type(s) == "string" and type(p) == "string" and not plain then
      local stripped = ogsub(p, "%%.", "")
      local _, q = ogsub(stripped, "[%*%+%-]", "")
      if q > 0 then
        local anchored = stripped:sub(1, 1) == "^" and name ~= "gmatch" and name ~= "gsub"
        local e = anchored and q or q + 1
        if (#s + 1) ^ e > WORK then
          error("string." .. name .. ": pattern with " .. q ..
                " repetition(s) is too costly for a " ..
                #s .. "-byte subject", 2)
        end
      end
    end
    return f(s, p, ...)
  end
end
string.find = guard("find", string.find, 4)
string.match = guard("match", string.match)
string.gmatch = guard("gmatch", string.gmatch)
string.gsub = guard("gsub", string.gsub)
getmetatable_raw("").__metatable = false
getmetatable_raw(G.__log).__metatable = false  -- the metatable lupa gives Python objects
env.string = string
env.table = {}; for k, v in pairs(table) do env.table[k] = v end
env.math = {}; for k, v in pairs(math) do env.math[k] = v end
env.utf8 = {}; for k, v in pairs(utf8) do env.utf8[k] = v end
env.os = {time = os.time, date = os.date, clock = os.clock, difftime = os.difftime}

env.getmetatable = getmetatable
env.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in the sandbox", 2)
  end
  return rawsetmt(t, mt)
end
env.xpcall = function(f, handler, ...)
  local r = pack(pcall(f, ...))
  if r[1] then return unpack(r, 1, r.n) end
  return false, handler(r[2])
end

local co = coroutine
local cocreate, coresume = co.create, co.resume
env.coroutine = {}; for k, v in pairs(co) do env.coroutine[k] = v end
env.coroutine.create = function(f)
  local c = cocreate(f); sethook(c, hook, "", STEP); return c
end
env.coroutine.wrap = function(f)
  local c = env.coroutine.create(f)
  return function(...)
    local r = pack(coresume(c, ...))
    if r[1] then return unpack(r, 2, r.n) end
    error(r[2], 0)
  end
end

-- json markers: metatables tell arrays from objects; __metatable hides them.
local ARRAY = {__metatable = "json.array"}
local OBJECT = {__metatable = "json.object"}
local function mark(t, kind)
  rawsetmt(t, kind == "array" and ARRAY or OBJECT)
  return t
end
local function kind_of(t)
  local mt = getmetatable_raw(t)
  if mt == ARRAY then return "array", nil end
  if mt == OBJECT then return "object", nil end
  return nil, nil
end
env.json = {
  encode = G.__json_encode,
  decode = G.__json_decode,
  array = function(t) if t == nil then t = {} end; return mark(t, "array") end,
  object = function(t) if t == nil then t = {} end; return mark(t, "object") end,
}
local plainfind = G.__plainfind
env.contains = function(s, sub)
  if type(s) ~= "string" or type(sub) ~= "string" then return false end
  return plainfind(s, sub, 1, true) ~= nil
end
env.log = G.__log
env.print = G.__log
env._G = env

local function compile(src, name)
  return load(src, "=" .. name, "t", env)
end
local function run(budget_, seconds, f, ...)
  budget, used, tripped = budget_, 0, nil
  deadline = clock() + seconds
  sethook(hook, "", STEP)
  return f(...)
end
local function status() return tripped end
return {compile = compile, run = run, clear = sethook, status = status, env = env,
        mark = mark, kind_of = kind_of}
"""


class LuaSandbox:
    """One script in its own sandboxed Lua runtime. Not thread-safe; calls are synchronous
    and bounded by `limits`."""

    def __init__(
        self, source: str, chunkname: str, limits: LuaLimits, logger: Callable[[str], None]
    ) -> None:
        self.chunkname = chunkname
        self.limits = limits
        rt = _lua.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attributes,
            max_memory=0,
        )
        self._rt = rt
        g = rt.globals()
        self._conv: Converter | None = None
        g["__json_encode"] = lambda v: (
            self._conv.json_encode(v) if self._conv else (None, "not ready")
        )
        g["__json_decode"] = lambda s: (
            self._conv.json_decode(s) if self._conv else (None, "not ready")
        )
        g["__log"] = lambda *parts: logger(" ".join(self._show(p) for p in parts))
        g["__plainfind"] = g.string.find
        g["__pattern_limit"] = PATTERN_WORK_LIMIT
        api = rt.execute(_PRELUDE, g)
        for name in ("__json_encode", "__json_decode", "__log", "__plainfind", "__pattern_limit"):
            g[name] = None
        self._run, self._clear, self._status = api.run, api.clear, api.status
        self._conv = Converter(rt, api.mark, api.kind_of)
        rt.set_max_memory(limits.memory)

        compiled = api.compile(source, chunkname)
        if isinstance(compiled, tuple):  # (nil, message)
            raise ScriptLoadError(*_syntax_sentence(str(compiled[1]), chunkname))
        check_globals(source, chunkname)
        chunk = compiled
        try:
            self._call_raw(chunk)
        except ScriptError as exc:
            raise ScriptLoadError(f"{exc} while loading the script") from None
        process = api.env.process
        if lupa.lua_type(process) != "function":
            raise ScriptLoadError(f"{chunkname} does not define a global function process(input)")
        self._process = process

    def _call_raw(self, fn: Any, *args: Any) -> Any:
        lim = self.limits
        try:
            return self._run(lim.instructions, lim.seconds, fn, *args)
        except BaseException as exc:  # noqa: BLE001 - mapped below, after the hook is off
            failure = exc
        finally:
            self._clear()  # a C function: safe to call while a tripped hook is set
        tripped = self._status()
        if tripped == "instruction limit":
            raise LimitExceeded(
                f"{self.chunkname}: instruction limit of {lim.instructions:,} exceeded"
            )
        if tripped == "time limit":
            raise LimitExceeded(f"{self.chunkname}: time limit of {lim.seconds:g}s exceeded")
        if isinstance(failure, _lua.LuaMemoryError):
            raise LimitExceeded(f"{self.chunkname}: memory limit of {_mb(lim.memory)} exceeded")
        if isinstance(failure, _lua.LuaError):
            raise ScriptError(_first_line(failure))
        if isinstance(failure, Exception):
            raise ScriptError(f"{self.chunkname}: {_first_line(failure)}")
        raise failure

    def call(self, value: Any) -> Any:
        """process(value) -> a JSON-like Python value, or None when the script returns nil."""
        try:
            arg = self._conv.to_lua(value)  # type: ignore[union-attr]
        except _lua.LuaMemoryError:
            raise LimitExceeded(
                f"{self.chunkname}: memory limit of {_mb(self.limits.memory)} exceeded"
            ) from None
        except ConversionError as exc:
            raise ScriptError(f"{self.chunkname}: input cannot be given to Lua: {exc}") from None
        result = self._call_raw(self._process, arg)
        if isinstance(result, tuple):  # several return values: only the first counts
            result = result[0] if result else None
        if result is None:
            return None
        if lupa.lua_type(result) != "table":
            raise ScriptError(
                f"{self.chunkname}: process must return a table or nil, "
                f"not a {_lua_type_name(result)}"
            )
        try:
            return self._conv.from_lua(result)  # type: ignore[union-attr]
        except ConversionError as exc:
            raise ScriptError(
                f"{self.chunkname}: the result cannot be encoded as JSON: {exc}"
            ) from None
        except UnicodeDecodeError:
            raise ScriptError(
                f"{self.chunkname}: the result has a string that is not UTF-8"
            ) from None

    def _show(self, part: Any) -> str:
        if isinstance(part, str):
            return part
        if lupa.lua_type(part) == "table" and self._conv is not None:
            text, _ = self._conv.json_encode(part)
            if text is not None:
                return str(text)
        return str(part)

    @property
    def memory_used(self) -> int:
        return int(self._rt.get_memory_used())


def _lua_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return lupa.lua_type(value) or type(value).__name__


def _deny_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("Python attributes are not reachable from the sandbox")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _syntax_sentence(err: str, chunkname: str) -> tuple[str, int | None]:
    # "scoring.lua:3: '=' expected near 'x'" -> "scoring.lua line 3: '=' expected near 'x'"
    rest = err.removeprefix(chunkname + ":")
    line, sep, msg = rest.partition(":")
    if rest != err and sep and line.strip().isdigit():
        return f"{chunkname} line {line.strip()}: {msg.strip()}", int(line.strip())
    return err, None


@functools.cache
def sandbox_globals() -> frozenset[str]:
    """The globals a script has: those of a real sandbox (the prelude's environment)."""
    rt = _lua.LuaRuntime(register_eval=False, register_builtins=False)
    g = rt.globals()
    for name in ("__json_encode", "__json_decode", "__log", "__plainfind"):
        g[name] = lambda *a: None
    g["__pattern_limit"] = PATTERN_WORK_LIMIT
    api = rt.execute(_PRELUDE, g)
    return frozenset(str(k) for k in api.env.keys())


SAFE_OS = frozenset({"time", "date", "clock", "difftime"})  # what scripts have of `os`


@functools.cache
def removed_globals() -> frozenset[str]:
    """Standard Lua globals the sandbox takes away (`os`, `io`, `require`, `load` ...),
    and those of older Lua versions."""
    rt = _lua.LuaRuntime(register_eval=False, register_builtins=False)
    standard = {str(k) for k in rt.globals().keys()}
    legacy = {"loadstring", "module", "setfenv", "getfenv", "unpack", "bit32", "gcinfo"}
    return frozenset((standard | legacy) - sandbox_globals())


def check_globals(source: str, chunkname: str) -> None:
    """Refuse a script that reads a standard global the sandbox does not have (one
    check: the builder's and `nimsforest lint`'s). A global the script never assigns but
    which is no standard one (a typo, most likely) is left to lint's warnings."""
    uses = missing_globals(source, sandbox_globals() - {"os"})
    removed = [u for u in uses or () if u.name in removed_globals()
               or (u.name == "os" and u.shown != "os" and u.shown.partition(".")[2] not in SAFE_OS)]
    if removed:
        first = removed[0]
        also = "".join(
            f", {u.shown} (line {u.line})" if u.line else f", {u.shown}" for u in removed[1:]
        )
        where = f"{chunkname} line {first.line}" if first.line else chunkname
        raise ScriptLoadError(
            f"{where}: uses {first.shown}{also}, which the sandbox does not have (no io, "
            "debug, package, require, load or dofile; of os only time, date, clock and difftime)",
            first.line,
        )


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


__all__ = [
    "LUA_VERSION",
    "LimitExceeded",
    "LuaLimits",
    "LuaSandbox",
    "ScriptError",
    "ScriptLoadError",
    "check_globals",
    "removed_globals",
    "sandbox_globals",
]
