"""Go templates (the Go original's nim prompts: `{{.score}}`, `{{range .signals}}`) turned
into the equivalent Jinja2, rendered by the same sandboxed environment as every prompt.

The subset the Go original's prompts use, with Go's meaning:
    {{.a.b}} {{.}} {{$}} {{$.a}}      fields of the dot (the leaf's data at the top)
    {{if P}} {{else if P}} {{else}} {{end}}    a missing field or an empty value is false
    {{range P}} ... {{else}} ... {{end}}      dot is each element; `{{range $i, $v := P}}`
    {{with P}} ... {{else}} ... {{end}}       dot is P when it is not empty
    eq ne lt le gt ge and or not len index printf print println html js urlquery json
    pipelines `P | printf "%d"`, parenthesised sub-pipelines, `{{- ` and ` -}}` trimming,
    `{{/* comments */}}`
A missing field printed with `{{.x}}` fails the event (as `{{ x }}` does in a Jinja2
prompt); Go would print `<no value>`.

`translate(text)` returns the Jinja2 text or raises GoTemplateError (one sentence with the
line); `looks_like_go(text)` detects a Go template (an action starting with `.`, `$`,
`range`, `with`, `end` or a Go comment, or one naming a field as ` .field`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from jinja2 import ChainableUndefined
from jinja2.sandbox import SandboxedEnvironment

from nimsforest.forest.prompt import environment

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_GO_HINT = re.compile(
    r"\{\{-?\s*(?:\.|\$|range\b|with\b|end\b|/\*|else\s+if\b|[^}]*?[\s(]\.[A-Za-z_])")
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)|(?P<lp>\()|(?P<rp>\))'
    r"|(?P<pipe>\|)|(?P<assign>:=|=)|(?P<comma>,)|(?P<word>[^\s()|,]+))"
)
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


class GoTemplateError(ValueError):
    """The Go template cannot be translated (one sentence naming the line)."""


def looks_like_go(text: str) -> bool:
    return bool(_GO_HINT.search(text))


@dataclass
class _Block:
    kind: str  # if, range, with
    dot: str  # the dot inside the block
    has_else: bool = False
    loop_var: str = ""
    line: int = 0


@dataclass
class _State:
    dots: list[str] = field(default_factory=lambda: ["data"])
    blocks: list[_Block] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)
    n: int = 0
    line: int = 0

    @property
    def dot(self) -> str:
        return self.dots[-1]


def translate(text: str) -> str:
    st = _State()
    out: list[str] = []
    pos = 0
    for m in _ACTION.finditer(text):
        literal = text[pos:m.start()]
        if m.group(1):
            literal = literal.rstrip()
        out.append(_escape(literal))
        line = st.line = text.count("\n", 0, m.start()) + 1
        try:
            out.append(_action(m.group(2).strip(), st))
        except GoTemplateError as exc:
            raise GoTemplateError(f"line {line}: {exc}") from None
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(_escape(text[pos:]))
    if st.blocks:
        b = st.blocks[-1]
        raise GoTemplateError(f"line {b.line}: {{{{{b.kind}}}}} has no {{{{end}}}}")
    return "".join(out)


def _escape(literal: str) -> str:
    """Text that Jinja2 must print as is."""
    if any(s in literal for s in ("{{", "{%", "{#", "}}", "%}", "#}")):
        return "{% raw %}" + literal + "{% endraw %}"
    return literal


def _action(body: str, st: _State) -> str:
    if body.startswith("/*"):
        return ""
    words = body.split(None, 1)
    head = words[0] if words else ""
    rest = words[1] if len(words) > 1 else ""
    if head == "if":
        st.blocks.append(_Block("if", st.dot, line=st.line))
        return "{% if " + _cond(rest, st) + " %}"
    if head == "else":
        if not st.blocks:
            raise GoTemplateError("{{else}} outside a block")
        b = st.blocks[-1]
        if rest.startswith("if "):
            if b.kind != "if":
                raise GoTemplateError("{{else if}} outside {{if}}")
            return "{% elif " + _cond(rest[3:], st) + " %}"
        b.has_else = True
        if b.kind in ("range", "with"):
            st.dots.pop()
            st.dots.append(b.dot if b.kind == "range" else st.dots[-1])
        return "{% else %}"
    if head == "end":
        if not st.blocks:
            raise GoTemplateError("{{end}} without a block")
        b = st.blocks.pop()
        if b.kind in ("range", "with"):
            st.dots.pop()
        if b.loop_var:
            st.vars = {k: v for k, v in st.vars.items() if v != b.loop_var}
        return {"if": "{% endif %}", "range": "{% endfor %}",
                "with": "{% endif %}{% endwith %}"}[b.kind]
    if head == "range":
        st.n += 1
        item = f"_it{st.n}"
        index_var = ""
        m = re.match(r"^\$(\w+)\s*(?:,\s*\$(\w+)\s*)?:=\s*(.*)$", rest)
        if m:
            first, second, rest = m.group(1), m.group(2), m.group(3)
            if second:
                index_var = f"_ix{st.n}"
                st.vars[first], st.vars[second] = index_var, item
            else:
                st.vars[first] = item
        seq = _pipeline(rest, st, default="[]")
        st.blocks.append(_Block("range", st.dot, loop_var=item, line=st.line))
        st.dots.append(item)
        if index_var:
            return (f"{{% for {index_var}, {item} in _go_items({seq}) %}}")
        return f"{{% for {item} in _go_iter({seq}) %}}"
    if head == "with":
        st.n += 1
        name = f"_w{st.n}"
        value = _pipeline(rest, st, default="none")
        st.blocks.append(_Block("with", st.dot, line=st.line))
        st.dots.append(name)
        return f"{{% with {name} = {value} %}}{{% if _go_true({name}) %}}"
    if head in ("define", "template", "block"):
        raise GoTemplateError(f"{{{{{head}}}}} is not supported")
    return "{{ _go_print(" + _pipeline(body, st) + ") }}"


def _cond(text: str, st: _State) -> str:
    return f"_go_true({_pipeline(text, st, default='none')})"


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot read '{text[pos:]}'")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _pipeline(text: str, st: _State, default: str | None = None) -> str:
    toks = _tokens(text)
    if not toks:
        raise GoTemplateError("an empty action")
    value, i = _parse_pipeline(toks, 0, st, default)
    if i != len(toks):
        raise GoTemplateError(f"unexpected '{toks[i][1]}'")
    return value


def _parse_pipeline(toks: list[tuple[str, str]], i: int, st: _State,
                    default: str | None) -> tuple[str, int]:
    value, i = _parse_command(toks, i, st, None, default)
    while i < len(toks) and toks[i][0] == "pipe":
        value, i = _parse_command(toks, i + 1, st, value, default)
    return value, i


def _parse_command(toks: list[tuple[str, str]], i: int, st: _State, piped: str | None,
                   default: str | None) -> tuple[str, int]:
    args: list[str] = []
    start = i
    while i < len(toks) and toks[i][0] not in ("pipe", "rp"):
        kind, tok = toks[i]
        if kind == "lp":
            sub, i = _parse_pipeline(toks, i + 1, st, default)
            if i >= len(toks) or toks[i][0] != "rp":
                raise GoTemplateError("a '(' is not closed")
            args.append(f"({sub})")
            i += 1
            continue
        args.append(_term(kind, tok, st, default))
        i += 1
    if piped is not None:
        args.append(piped)
    if not args:
        raise GoTemplateError("an empty command")
    name = toks[start][1] if toks[start][0] == "word" else ""
    if name in _FUNCS:
        return _FUNCS[name](args[1:]), i
    if len(args) > 1:
        raise GoTemplateError(f"'{toks[start][1]}' is not a function")
    return args[0], i


def _term(kind: str, tok: str, st: _State, default: str | None) -> str:
    if kind == "str":
        if tok.startswith("`"):
            return repr(tok[1:-1])
        return tok
    if kind == "num":
        return tok
    if kind != "word":
        raise GoTemplateError(f"unexpected '{tok}'")
    if tok in ("true", "false"):
        return tok
    if tok == "nil":
        return "none"
    if tok == ".":
        return st.dot
    if tok == "$":
        return "data"
    if tok.startswith("$"):
        var, _, path = tok[1:].partition(".")
        if var == "":
            return _field("data", path, default)
        if var not in st.vars:
            raise GoTemplateError(f"the variable ${var} is not declared")
        return _field(st.vars[var], path, default) if path else st.vars[var]
    if tok.startswith("."):
        return _field(st.dot, tok[1:], default)
    if tok in _FUNCS:
        return tok
    raise GoTemplateError(f"'{tok}' is not a field, variable or function")


def _field(base: str, path: str, default: str | None) -> str:
    for name in path.split("."):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise GoTemplateError(f"'{name}' is not a field name")
    parts = path.split(".")
    if base == "data":  # the top: the data's fields are the template's variables
        expr, rest = parts[0], parts[1:]
    else:
        expr, rest = base, parts
    for p in rest:
        # where a missing field is allowed (conditions, ranges), so is a missing parent
        expr = f"({expr}|default({{}}))[{p!r}]" if default is not None else f"{expr}[{p!r}]"
    return f"({expr}|default({default}))" if default is not None else expr


_Func = Callable[[list[str]], str]


def _bin(op: str) -> _Func:
    def f(a: list[str]) -> str:
        if len(a) != 2:
            raise GoTemplateError(f"'{op}' takes two arguments")
        return f"({a[0]} {op} {a[1]})"
    return f


def _fold(op: str) -> _Func:
    def f(a: list[str]) -> str:
        if len(a) < 2:
            raise GoTemplateError(f"'{op}' takes at least two arguments")
        return "(" + f" {op} ".join(a) + ")"
    return f


def _one(template: str, name: str) -> _Func:
    def f(a: list[str]) -> str:
        if len(a) != 1:
            raise GoTemplateError(f"'{name}' takes one argument")
        return template.format(a[0])
    return f


def _index(a: list[str]) -> str:
    if len(a) < 2:
        raise GoTemplateError("'index' takes a value and at least one key")
    return a[0] + "".join(f"[{k}]" for k in a[1:])


def _printf(a: list[str]) -> str:
    if not a:
        raise GoTemplateError("'printf' takes a format")
    return f"_go_printf({', '.join(a)})"


_FUNCS: dict[str, _Func] = {
    **{k: _bin(v) for k, v in _COMPARE.items()},
    "and": _fold("and"), "or": _fold("or"),
    "not": _one("(not _go_true({}))", "not"),
    "len": _one("({}|length)", "len"),
    "index": _index,
    "printf": _printf,
    "print": lambda a: "(" + " ~ ".join(f"_go_print({x})" for x in a) + ")",
    "println": lambda a: "(" + " ~ ' ' ~ ".join(f"_go_print({x})" for x in a) + " ~ '\\n')",
    "html": _one("({}|escape)", "html"),
    "js": _one("({}|tojson)", "js"),
    "json": _one("({}|tojson)", "json"),
    "urlquery": _one("({}|urlencode)", "urlquery"),
}


class NoValue(ChainableUndefined):
    """A field the data lacks, printed as Go's text/template prints a missing map key
    (`<no value>`) instead of failing the event; false in a condition, empty in a range."""

    __slots__ = ()

    def __str__(self) -> str:
        return "<no value>"


def go_globals() -> dict[str, object]:
    """What the translated template calls (added to the environment's globals)."""
    return {"_go_true": _true, "_go_iter": _iter, "_go_items": _items, "_go_print": _print,
            "_go_printf": _go_printf}


def _true(v: object) -> bool:
    return bool(v) and v != 0


def _iter(v: object) -> list[object]:
    if isinstance(v, dict):
        return [v[k] for k in sorted(v)]
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return list(range(v))
    return []


def _items(v: object) -> list[tuple[object, object]]:
    if isinstance(v, dict):
        return [(k, v[k]) for k in sorted(v)]
    if isinstance(v, (list, tuple)):
        return list(enumerate(v))
    return []


def _print(v: object) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    if isinstance(v, list):
        return "[" + " ".join(_print(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_print(v[k])}" for k in sorted(v)) + "]"
    return str(v)


_VERB = re.compile(r"%([-+# 0]*\d*(?:\.\d+)?)([vdsfgqtxX%])")


def _go_printf(fmt: str, *args: object) -> str:
    it = iter(args)

    def sub(m: re.Match[str]) -> str:
        flags, verb = m.group(1), m.group(2)
        if verb == "%":
            return "%"
        try:
            value = next(it)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        if verb in ("v", "s"):
            return ("%" + flags + "s") % _print(value)
        if verb == "t":
            return _print(bool(value))
        if verb == "q":
            return '"' + str(value).replace('"', '\\"') + '"'
        if verb == "d":
            return ("%" + flags + "d") % int(value)  # type: ignore[call-overload]
        return ("%" + flags + verb) % value

    return _VERB.sub(sub, fmt)


__all__ = ["GoTemplateError", "go_globals", "looks_like_go", "translate"]


def go_environment() -> SandboxedEnvironment:
    """The sandboxed Jinja2 a translated Go template renders in: Go's functions, and a
    missing field printed as `<no value>`."""
    env = environment()
    env.undefined = NoValue
    env.globals.update(go_globals())
    return env
