"""Which globals a Lua script reads that the sandbox does not give it (`os.execute`,
`io.open`, `require`): found before it runs, so such a script is refused when it is added
(and reported by `nimsforest lint`) instead of failing on every event.

Lua's own compiler decides: the script is compiled (not run) by the same Lua the sandbox
runs, its bytecode is dumped (`string.dump`) and read here. Every global access compiles to
an access of the chunk's `_ENV` upvalue (GETTABUP / SETTABUP with the name as a constant;
GETUPVAL of `_ENV` then GETFIELD / SETFIELD for a name longer than Lua's short strings), so
the scopes are the compiler's: locals, parameters, loop variables, upvalues, `local _ENV`
(after which names are fields of that table, not globals) and Lua 5.5's `global`
declarations. `os.execute` is shown with its field when the next instruction indexes the
global by a constant (`os.execute`, `os["execute"]`, `os:execute()`). A global the script
assigns anywhere (`function helper() ... end`, `count = 0`) is its own and may be read.
Pure (one private Lua state, used only to compile).

The reader follows Lua 5.5's `ldump.c` (lupa's `lua55`) and checks it used the whole dump;
a format it does not know raises (tests/forest/test_luacheck.py runs on every lupa).
"""

from __future__ import annotations

import functools
import logging
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from lupa import lua55 as _lua

log = logging.getLogger("nimsforest.forest.lua")


@dataclass(frozen=True)
class GlobalUse:
    """A global read: `shown` is what the script wrote (`os.execute`), `name` the global."""

    name: str
    shown: str
    line: int | None


class DumpFormatError(Exception):
    """The dump is not one this reader knows (another Lua version or format)."""


# Lua 5.5 opcodes (lopcodes.h), and the instruction fields (7-bit op, A 8, k 1, B 8, C 8)
_LOADK, _GETUPVAL, _GETTABUP, _GETTABLE, _GETFIELD = 3, 9, 11, 12, 14
_SETTABUP, _SETTABLE, _SETFIELD, _SELF = 15, 16, 18, 20
_NO_A = frozenset({56, 84})  # JMP, EXTRAARG: no register A
_MULTI = frozenset({8, 68, 69, 76, 80})  # LOADNIL, CALL, TAILCALL, TFORCALL, VARARG: R[A..]
_HEADER = b"\x1bLua\x55\x00\x19\x93\r\n\x1a\n"
_ABSLINEINFO = -0x80
# constant tags (lobject.h): nil, false, true, integer, float, short and long strings
_NIL, _FALSE, _TRUE, _INT, _FLT, _SHRSTR, _LNGSTR = 0, 1, 17, 3, 19, 4, 20


@dataclass
class _Proto:
    code: list[int]
    constants: list[object]
    upvalues: list[tuple[int, int]]  # (instack, idx) each
    protos: list[_Proto]
    lines: list[int] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.strings: list[str | None] = [None]  # index 0: NULL

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DumpFormatError("the dump ends early")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        x = 0
        while True:
            b = self.byte()
            x = (x << 7) | (b & 0x7F)
            if not b & 0x80:
                return x

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def string(self) -> str | None:
        size = self.varint()
        if size == 0:
            idx = self.varint()
            if idx >= len(self.strings):
                raise DumpFormatError("a string reuses an unknown index")
            return self.strings[idx]
        s = self.take(size)[:-1].decode("utf-8", "replace")  # ends with '\0'
        self.strings.append(s)
        return s

    def header(self) -> None:
        if self.take(len(_HEADER)) != _HEADER:
            raise DumpFormatError("not a Lua 5.5 dump")
        for size in (4, 4, 8, 8):  # int, Instruction, lua_Integer, lua_Number
            if self.byte() != size:
                raise DumpFormatError("unexpected sizes in the dump's header")
            self.take(size)
        self.byte()  # the main function's number of upvalues

    def function(self) -> _Proto:
        linedefined = self.varint()
        self.varint()  # lastlinedefined
        self.take(3)  # numparams, flag, maxstacksize
        n = self.varint()
        self.align(4)
        code = list(struct.unpack(f"={n}I", self.take(4 * n)))
        constants: list[object] = []
        for _ in range(self.varint()):
            tag = self.byte()
            if tag in (_SHRSTR, _LNGSTR):
                constants.append(self.string())
            elif tag == _FLT:
                constants.append(self.take(8))
            elif tag == _INT:
                constants.append(self.varint())
            elif tag in (_NIL, _FALSE, _TRUE):
                constants.append(None)
            else:
                raise DumpFormatError(f"unknown constant tag {tag}")
        upvalues = []
        for _ in range(self.varint()):
            instack, idx, _kind = self.take(3)
            upvalues.append((instack, idx))
        protos = [self.function() for _ in range(self.varint())]
        self.string()  # source
        deltas = [b - 256 if b > 127 else b for b in self.take(self.varint())]
        n_abs = self.varint()
        absolute: dict[int, int] = {}
        if n_abs:
            self.align(4)
            pairs = struct.unpack(f"={2 * n_abs}i", self.take(8 * n_abs))
            absolute = dict(zip(pairs[0::2], pairs[1::2], strict=True))
        for _ in range(self.varint()):  # locals
            self.string()
            self.varint()
            self.varint()
        for _ in range(self.varint()):  # upvalue names
            self.string()
        lines, line = [], linedefined
        for pc, d in enumerate(deltas):
            line = absolute.get(pc, line) if d == _ABSLINEINFO else line + d
            lines.append(line)
        return _Proto(code, constants, upvalues, protos, lines)


def read_dump(data: bytes) -> _Proto:
    """The main function of a Lua 5.5 binary chunk; DumpFormatError if it is none."""
    r = _Reader(data)
    r.header()
    main = r.function()
    if r.pos != len(data):
        raise DumpFormatError("bytes left after the main function")
    return main


class _Compiler:
    """One Lua state that only compiles (load, never call) and dumps."""

    def __init__(self) -> None:
        rt = _lua.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
        self._dump = rt.eval(
            "function(src) local f, err = load(src, '=check', 't', {}) "
            "if not f then return nil, err end return string.dump(f), nil end"
        )
        self._lock = threading.Lock()  # a Lua state is not for two threads at once

    def dump(self, source: str) -> bytes | None:
        with self._lock:
            out, _err = self._dump(source.encode())
        return bytes(out) if out is not None else None


@functools.cache
def _compiler() -> _Compiler:
    return _Compiler()


def _fields(ins: int) -> tuple[int, int, int, int]:
    return ins & 0x7F, (ins >> 7) & 0xFF, (ins >> 16) & 0xFF, ins >> 24


def _through_register(p: _Proto, pc: int, reg: int) -> tuple[bool, str | None, int]:
    """`_ENV` was put in register `reg` at `pc` (GETUPVAL): how it is indexed next.
    Returns (is_write, name or None when not by a constant, pc of the access). A name
    that is no short string constant (a long one, or a function with over 255 constants)
    is loaded into a register first (LOADK), and an assignment evaluates its value before
    the SETTABLE / SETFIELD, so the scan goes on to the first instruction on `reg`."""
    keys: dict[int, object] = {}
    for j in range(pc + 1, len(p.code)):
        op, a, b, c = _fields(p.code[j])
        if op == _GETFIELD and b == reg:
            return False, _str(p.constants[c]), j
        if op == _GETTABLE and b == reg:
            return False, _str(keys.get(c)), j
        if op == _SELF and b == reg:
            return False, _str(p.constants[c]), j
        if op == _SETFIELD and a == reg:
            return True, _str(p.constants[b]), j
        if op == _SETTABLE and a == reg:
            return True, _str(keys.get(b)), j
        if op == _LOADK and a != reg:
            keys[a] = p.constants[(p.code[j] >> 15) & 0x1FFFF]
            continue
        if op in _NO_A:
            continue
        if a == reg or (op in _MULTI and a < reg):  # `reg` overwritten: a plain read
            break
    return False, None, pc


def _field_of(p: _Proto, pc: int, reg: int) -> str | None:
    """The constant field by which the next instruction indexes register `reg`
    (`os.execute`, `os["execute"]`, `os:execute()`; LOADK + GETTABLE past 255 constants)."""
    if pc + 1 >= len(p.code):
        return None
    op, a, b, c = _fields(p.code[pc + 1])
    if op in (_GETFIELD, _SELF) and b == reg:
        return _str(p.constants[c])
    if op == _LOADK and pc + 2 < len(p.code):
        op2, _, b2, c2 = _fields(p.code[pc + 2])
        if op2 == _GETTABLE and b2 == reg and c2 == a:
            return _str(p.constants[(p.code[pc + 1] >> 15) & 0x1FFFF])
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _accesses(main: _Proto) -> tuple[list[GlobalUse], set[str]]:
    """The global reads (in the order of their lines) and the names assigned."""
    reads: list[tuple[int, int, GlobalUse]] = []
    writes: set[str] = set()

    def walk(p: _Proto, env: frozenset[int]) -> None:
        for pc, ins in enumerate(p.code):
            op, a, b, c = _fields(ins)
            at = pc  # the instruction that leaves the global's value in register `out`
            if op == _GETTABUP and b in env:
                name, out = _str(p.constants[c]), a
            elif op == _SETTABUP and a in env:
                if (key := _str(p.constants[b])) is not None:
                    writes.add(key)
                continue
            elif op == _GETUPVAL and b in env:  # a long name, an alias of _ENV, or `_ENV[k]`
                is_write, key, at = _through_register(p, pc, a)
                if is_write:
                    if key is not None:
                        writes.add(key)
                    continue
                name, out = key or "_ENV", _fields(p.code[at])[1]
            else:
                continue
            if name is None:
                continue
            line = p.lines[pc] if pc < len(p.lines) else None
            shown = name
            if (key := _field_of(p, at, out)) is not None:
                shown = f"{name}.{key}"
            reads.append((line or 0, len(reads), GlobalUse(name, shown, line)))
        for child in p.protos:
            walk(child, frozenset(i for i, (instack, idx) in enumerate(child.upvalues)
                                  if not instack and idx in env))

    walk(main, frozenset({0}))  # a chunk's first upvalue is its _ENV
    return [u for _, _, u in sorted(reads, key=lambda r: (r[0], r[1]))], writes


@functools.cache
def _warn_once(sentence: str) -> None:
    log.warning("%s", sentence)


def missing_globals(source: str, available: Iterable[str]) -> tuple[GlobalUse, ...] | None:
    """The reads of globals neither in `available` nor assigned by the script, in source
    order, each shown name once. None when Lua cannot compile the script (its compile
    error is then what is reported), or when the dump is in a format this reader does not
    know (logged once; tests/forest/test_luacheck.py fails on such a lupa)."""
    data = _compiler().dump(source)
    if data is None:
        return None
    try:
        main = read_dump(data)
    except DumpFormatError as exc:  # another lupa's Lua: no check rather than no scripts
        _warn_once(f"the Lua globals check is off: {exc} (Lua {_lua.LUA_VERSION})")
        return None
    reads, writes = _accesses(main)
    have = set(available) | writes
    seen: set[str] = set()
    out: list[GlobalUse] = []
    for use in reads:
        if use.name not in have and use.shown not in seen:
            seen.add(use.shown)
            out.append(use)
    return tuple(out)


__all__ = ["DumpFormatError", "GlobalUse", "missing_globals", "read_dump"]
