"""`nimsforest test`: a forest's own tests, run in-process without NATS.

A test file (`*.test.yaml`, beside forest.yaml or in a folder under it) gives input
events and what the forest should make of them:

```yaml
forest: ../forest.yaml          # optional: the nearest forest.yaml up from this file
fixtures: demo.fixtures.json    # optional: recorded answers of HTTP brains (this default)
soil: {c-9: {pursue: false}}    # optional: Soil before each test
tests:
  - name: a CTO of a large tech company is a high-priority lead
    river: {subject: contacts, data: {event: contact.created, contact: {id: c-1}}}
    # or `wind: {subject: contact.created, data: {...}}`; either may be a list
    expect:
      leaves:                   # each matched by a distinct leaf, in any order
        - {subject: lead.scored, data: {score: 105}}
      no_leaves: [lead.rejected]  # subjects (or patterns) no leaf may have
      humus: [{nim: qualify, action: update, entity: c-1, data: {pursue: true}}]
      soil: {c-1: {priority: high}, c-9: null}   # null: no such key
      outputs: [{output: crm, body: {contact_id: c-1}}]   # rendered, never sent
      errors: [{component: "treehouse 'scoring'", message: "attempt to compare"}]
```

Matching is partial: an expected mapping matches a mapping that has at least its keys
(recursively); a list matches a list of the same length, item by item; anything else
must be equal. An event that fails in a component fails the test, unless `errors`
expects it.

Each message is handled by the real component built from forest.yaml (its Lua in the
sandbox, its template rendered, the rules brain deciding), messages routed by their
subjects as the streams would, Humus applied to an in-memory Soil by the decomposer's
rule. An output renders its request (body, text, chat id) for each leaf, which is
recorded, never sent; sources that run (schedules, pollers) do not run. An HTTP brain
(openai, anthropic, ollama) answers from the fixtures file, keyed by brain,
model, the conversation (the rendered prompt, and a schema retry's turns) and the schema;
`record=True` asks the real brain once and stores its answer (text and token usage). The
nim's contract (output_schema, fallback, decision_timeout) applies as on a node. Components are built once per test file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from nats.aio.msg import Msg
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from nimsforest.forest.brains import Brain, Reply, Usage
from nimsforest.forest.build import build_component
from nimsforest.forest.component import Component
from nimsforest.forest.config import ForestConfig, read_forest_config
from nimsforest.forest.delivery import Delivery, Handoff, Output
from nimsforest.forest.errors import ForestConfigError
from nimsforest.forest.handlers import SOURCE_HEADER, DecomposerHandler, NimHandler
from nimsforest.forest.leaf import Compost, CompostAction, Leaf, dumps, soil_key
from nimsforest.forest.model import ComponentKind, ComponentRef
from nimsforest.forest.soil import SoilEntry
from nimsforest.forest.specs import USER_KINDS, NimSpec
from nimsforest.forest.subjects import (
    HUMUS_PREFIX,
    RIVER_PREFIX,
    WIND_PREFIX,
    overlap,
    river_subject,
)
from nimsforest.validation import first_error

MAX_MESSAGES = 10_000  # per test: a cycle of leaves stops here


# --- the file format ---------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _listed(v: Any) -> Any:
    return v if isinstance(v, list) or v is None else [v]


class Event(_Model):
    subject: str
    data: Any


class ExpectedLeaf(_Model):
    subject: str  # a subject or a pattern
    data: Any = None  # None: any data
    source: str | None = None  # e.g. "treehouse:scoring"


class ExpectedHumus(_Model):
    nim: str | None = None
    action: CompostAction | None = None
    entity: str | None = None
    data: Any = None


class ExpectedError(_Model):
    component: str  # "treehouse 'scoring'" (as sentences name it)
    message: str = ""  # a part of the error's sentence


class ExpectedOutput(_Model):
    output: str  # the output's name
    body: Any = None  # matched against the request body: partially when it is JSON, else
    #                   a string the body contains; None: any body


class Expect(_Model):
    leaves: tuple[ExpectedLeaf, ...] = ()
    outputs: tuple[ExpectedOutput, ...] = ()
    no_leaves: tuple[str, ...] = ()
    humus: tuple[ExpectedHumus, ...] = ()
    soil: dict[str, Any] = {}
    errors: tuple[ExpectedError, ...] = ()


class Case(_Model):
    name: str = Field(min_length=1)
    river: Annotated[tuple[Event, ...], BeforeValidator(_listed)] = ()
    wind: Annotated[tuple[Event, ...], BeforeValidator(_listed)] = ()
    expect: Expect = Expect()


class TestFile(_Model):
    __test__ = False  # not a pytest class
    forest: Path | None = None
    fixtures: Path | None = None
    soil: dict[str, Any] = {}
    tests: tuple[Case, ...] = Field(min_length=1)


class TestFileError(Exception):
    """A test file that cannot be read, or is not a valid test file (one sentence)."""

    __test__ = False


def read_test_file(path: Path) -> tuple[TestFile, Path, Path]:
    """The test file at `path`, its forest.yaml and its fixtures file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise TestFileError(f"{path} cannot be read: {getattr(exc, 'strerror', exc)}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise TestFileError(f"{path} is not valid YAML{where}.") from None
    try:
        tf = TestFile.model_validate(data)
    except ValidationError as exc:
        err = first_error(exc)
        where = f", field '{err.field}'" if err and err.field else ""
        raise TestFileError(f"{path}{where}: {err.message if err else exc}.") from None
    base = path.parent
    if tf.forest is not None:
        forest = base / tf.forest
    else:
        found = next((d / "forest.yaml" for d in (base, *base.parents)
                      if (d / "forest.yaml").is_file()), None)
        if found is None:
            raise TestFileError(f"{path}: no forest.yaml beside it or above it; name one "
                                "with `forest:`.")
        forest = found
    fixtures = base / tf.fixtures if tf.fixtures else path.with_name(
        path.name.removesuffix(".yaml").removesuffix(".test") + ".fixtures.json")
    return tf, forest.resolve(), fixtures


def find_test_files(paths: Sequence[Path]) -> list[Path]:
    """Test files named or found under the folders named (a forest.yaml names its folder)."""
    out: list[Path] = []
    for p in paths:
        if p.is_file() and p.name.endswith(".test.yaml"):
            out.append(p)
        else:
            folder = p.parent if p.is_file() else p
            out += sorted(x for x in folder.rglob("*.test.yaml")
                          if not any(part.startswith(".") for part in x.parts))
    return list(dict.fromkeys(x.resolve() for x in out))


# --- partial matching --------------------------------------------------------------------------
def matches(expected: Any, actual: Any) -> bool:
    """Partial match: see the module's docstring."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(actual) == len(expected)
                and all(matches(e, a) for e, a in zip(expected, actual, strict=True)))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return bool(expected == actual)


# --- HTTP brains from fixtures -----------------------------------------------------------------
class FixtureMissing(Exception):
    pass


class Fixtures:
    """Recorded answers of HTTP brains: {nim: {key: {"prompt", "answer"}}}."""

    def __init__(self, path: Path, record: bool) -> None:
        self.path, self.record = path, record
        self.changed = False
        try:
            self.data: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except FileNotFoundError:
            self.data = {}
        except (OSError, ValueError) as exc:
            raise TestFileError(f"{path} is not a readable fixtures file: {exc}.") from None

    def save(self) -> None:
        if self.changed:
            self.path.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")


def fixture_key(brain: Brain, messages: Sequence[tuple[str, str]],
                schema: dict[str, Any] | None) -> str:
    """The key of one question: the brain, its model, the conversation and the schema."""
    text = json.dumps([brain.kind, brain.model, list(messages), schema], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FixtureBrain(Brain):
    """An HTTP brain that answers from the fixtures (or, recording, asks the real one)."""

    needs_prompt = True

    def __init__(self, nim: str, real: Brain, fixtures: Fixtures) -> None:
        self._nim, self._real, self._fixtures = nim, real, fixtures
        self.kind, self.concurrency = real.kind, real.concurrency

    @property
    def model(self) -> str:
        return self._real.model

    @property
    def prices(self) -> tuple[float, float]:
        return self._real.prices

    async def ask(self, messages: Sequence[tuple[str, str]],
                  schema: dict[str, Any] | None = None) -> Reply:
        key = fixture_key(self._real, messages, schema)
        known = self._fixtures.data.get(self._nim, {})
        if key in known and not self._fixtures.record:
            rec = known[key]
            usage = rec.get("usage") or {}
            return Reply(str(rec["answer"]), Usage(int(usage.get("prompt_tokens", 0)),
                                                   int(usage.get("completion_tokens", 0))))
        if not self._fixtures.record:
            raise FixtureMissing(
                f"nim '{self._nim}' has no recorded answer of {self.kind} for this prompt in "
                f"{self._fixtures.path}; run `nimsforest test --record` once to record it")
        reply = await self._real.ask(messages, schema)
        self._fixtures.data.setdefault(self._nim, {})[key] = {
            "prompt": messages[-1][1], "turns": len(messages), "answer": reply.text,
            "usage": {"prompt_tokens": reply.usage.prompt_tokens,
                      "completion_tokens": reply.usage.completion_tokens},
        }
        self._fixtures.changed = True
        return reply

    async def aclose(self) -> None:
        await self._real.aclose()


# --- running -----------------------------------------------------------------------------------
@dataclass
class Trace:
    """What one test's events made."""

    leaves: list[Leaf] = field(default_factory=list)
    humus: list[Compost] = field(default_factory=list)
    soil: dict[str, Any] = field(default_factory=dict)  # soil key -> value
    errors: list[tuple[ComponentRef, str]] = field(default_factory=list)
    outputs: list[tuple[str, bytes]] = field(default_factory=list)  # (output, request body)


@dataclass(frozen=True)
class CaseResult:
    file: Path
    name: str
    failures: tuple[str, ...]
    seconds: float
    error: bool = False  # the test could not run (vs. it ran and did not match)

    @property
    def passed(self) -> bool:
        return not self.failures


class Simulation:
    """The forest's components, built as a node builds them, fed messages in-process."""

    def __init__(self, config: ForestConfig, fixtures: Fixtures) -> None:
        self.components: list[Component] = []
        for kind in USER_KINDS:
            for name, spec in config.specs(kind).items():
                comp = build_component(config, kind, name, spec)
                if isinstance(spec, NimSpec) and isinstance(comp.handler, NimHandler):
                    h = comp.handler
                    chain = [FixtureBrain(name, b, fixtures) if b.needs_prompt else b
                             for b in h.decider.chain]
                    comp.handler = NimHandler(name, comp.consumer.durable if comp.consumer
                                              else name, spec.publishes, h.prompt,
                                              h.decider.with_chain(chain), spec.humus,
                                              comp.stats)
                self.components.append(comp)
        self._seq = 0

    async def close(self) -> None:
        for c in self.components:
            await c.stop(0)

    async def run(self, inputs: Sequence[tuple[str, bytes, dict[str, str]]],
                  soil: dict[str, Any]) -> Trace:
        trace = Trace(soil={soil_key(k): v for k, v in soil.items()})
        queue = deque(inputs)
        handled = 0
        while queue:
            subject, payload, headers = queue.popleft()
            handled += 1
            if handled > MAX_MESSAGES:
                trace.errors.append((ComponentRef(kind=ComponentKind.DECOMPOSER, name="test"),
                                     f"more than {MAX_MESSAGES} messages: leaves go round a "
                                     "cycle"))
                break
            if subject.startswith(WIND_PREFIX):
                trace.leaves.append(Leaf.from_json(payload))
            elif subject.startswith(HUMUS_PREFIX):
                self._decompose(Compost.from_json(payload), trace)
                continue
            stream = "RIVER" if subject.startswith(RIVER_PREFIX) else "WIND"
            for comp in self.components:
                cons = comp.consumer
                if cons is None or comp.handler is None or cons.stream != stream \
                        or not overlap(cons.filter_subject, subject):
                    continue
                for out in await self._handle(comp, subject, payload, headers, trace):
                    queue.append((out.subject, out.payload, out.headers or {}))
        return trace

    async def _handle(self, comp: Component, subject: str, payload: bytes,
                      headers: dict[str, str], trace: Trace) -> Sequence[Output]:
        assert comp.handler is not None and comp.consumer is not None
        if comp.kind is ComponentKind.OUTPUT:  # rendered, recorded, never sent
            from nimsforest.forest.outputs import OutputHandler  # only forests with outputs

            assert isinstance(comp.handler, OutputHandler)
            try:
                trace.outputs.append((comp.name, comp.handler.render(Leaf.from_json(payload),
                                                                      payload)))
            except Exception as exc:  # noqa: BLE001 - the leaf fails in that output
                trace.errors.append((comp.ref, str(exc) or type(exc).__name__))
            return ()
        self._seq += 1
        reply = f"$JS.ACK.{comp.consumer.stream}.{comp.consumer.durable}.1.{self._seq}.{self._seq}.0.0"
        d = Delivery(Msg(_client=None, subject=subject, reply=reply,  # type: ignore[arg-type]
                         data=payload, headers=headers))
        try:
            out = comp.handler.handle_sync(d) if not comp.handler.is_async else Handoff.ASYNC
            if out is Handoff.ASYNC:
                out = await comp.handler.handle_async(d)
            assert not isinstance(out, Handoff)
            return out
        except Exception as exc:  # noqa: BLE001 - the event fails in that component
            trace.errors.append((comp.ref, str(exc) or type(exc).__name__))
            return ()

    @staticmethod
    def _decompose(entry: Compost, trace: Trace) -> None:
        trace.humus.append(entry)
        key = soil_key(entry.entity)
        exists = key in trace.soil
        cur = SoilEntry(key=key, value=None, revision=1 if exists else 0, humus_seq=0)
        if DecomposerHandler._skip(entry, cur):  # the decomposer's own rule
            return
        if entry.action is CompostAction.DELETE:
            trace.soil.pop(key, None)
        else:
            trace.soil[key] = entry.data


def inputs_of(case: Case) -> list[tuple[str, bytes, dict[str, str]]]:
    out: list[tuple[str, bytes, dict[str, str]]] = []
    for e in case.river:
        out.append((river_subject(e.subject), dumps(e.data), {SOURCE_HEADER: "test"}))
    for e in case.wind:
        out.append((WIND_PREFIX + e.subject, Leaf.new(e.subject, e.data, "test").to_json(), {}))
    return out


def check(expect: Expect, trace: Trace) -> list[str]:
    """What the trace lacks of `expect` (one sentence each); [] when it matches."""
    failures: list[str] = []
    expected_errors = list(expect.errors)
    for ref, message in trace.errors:
        want_e = next((e for e in expected_errors if e.component == str(ref)
                       and e.message in message), None)
        if want_e is None:
            failures.append(f"{ref} failed: {message}")
        else:
            expected_errors.remove(want_e)
    for e in expected_errors:
        failures.append(f"expected {e.component} to fail with '{e.message}', it did not")
    unused = list(trace.leaves)
    for want in expect.leaves:
        hit = next((leaf for leaf in unused if overlap(want.subject, leaf.subject)
                    and (want.data is None or matches(want.data, leaf.data))
                    and (want.source is None or want.source == leaf.source)), None)
        if hit is None:
            shown = [f"{leaf.subject} {_short(leaf.data)}" for leaf in trace.leaves]
            failures.append(f"expected a leaf {want.subject}"
                            + (f" with data {_short(want.data)}" if want.data is not None else "")
                            + f"; the leaves were: {'; '.join(shown) or 'none'}")
        else:
            unused.remove(hit)
    for want_o in expect.outputs:
        if not any(name == want_o.output and _body_matches(want_o.body, body)
                   for name, body in trace.outputs):
            got = [f"{name} {body[:120]!r}" for name, body in trace.outputs]
            failures.append(f"expected output '{want_o.output}' to send"
                            + (f" {_short(want_o.body)}" if want_o.body is not None else "")
                            + f"; the outputs sent: {'; '.join(got) or 'nothing'}")
    for pattern in expect.no_leaves:
        for leaf in trace.leaves:
            if overlap(pattern, leaf.subject):
                failures.append(f"expected no leaf {pattern}, got {leaf.subject} "
                                f"{_short(leaf.data)}")
    for want_h in expect.humus:
        if not any((want_h.nim is None or want_h.nim == h.nim)
                   and (want_h.action is None or want_h.action is h.action)
                   and (want_h.entity is None or want_h.entity == h.entity)
                   and (want_h.data is None or matches(want_h.data, h.data))
                   for h in trace.humus):
            got = [f"{h.nim} {h.action.value} {h.entity} {_short(h.data)}" for h in trace.humus]
            failures.append(f"expected a Humus entry {want_h.model_dump(exclude_none=True)}; "
                            f"the entries were: {'; '.join(got) or 'none'}")
    for entity, value in expect.soil.items():
        have = trace.soil.get(soil_key(entity))
        if value is None and have is not None:
            failures.append(f"expected no Soil key {entity}, it holds {_short(have)}")
        elif value is not None and not matches(value, have):
            failures.append(f"expected Soil {entity} to match {_short(value)}, it holds "
                            f"{_short(have) if have is not None else 'nothing'}")
    return failures


def _body_matches(expected: Any, body: bytes) -> bool:
    if expected is None:
        return True
    try:
        return matches(expected, json.loads(body))
    except ValueError:
        return isinstance(expected, str) and expected in body.decode(errors="replace")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


async def run_test_file(path: Path, *, record: bool = False) -> list[CaseResult]:
    """Every test of the file at `path`, in order."""
    began = time.perf_counter()
    try:
        tf, forest_path, fixtures_path = read_test_file(path)
        config = read_forest_config(forest_path)
        fixtures = Fixtures(fixtures_path, record)
        sim = Simulation(config, fixtures)
    except (TestFileError, ForestConfigError) as exc:
        return [CaseResult(path, "(the test file)", (str(exc),), time.perf_counter() - began,
                           error=True)]
    results = []
    try:
        for case in tf.tests:
            t0 = time.perf_counter()
            try:
                trace = await sim.run(inputs_of(case), dict(tf.soil))
                failures = check(case.expect, trace)
            except ValueError as exc:  # an input that is no valid subject or leaf
                failures = [f"the test's input is invalid: {exc}"]
            results.append(CaseResult(path, case.name, tuple(failures),
                                      time.perf_counter() - t0))
    finally:
        await sim.close()
        fixtures.save()
    return results


# --- --live: the same file against a real embedded node ---------------------------------------
async def run_test_file_live(path: Path, *, settle: float = 15.0) -> list[CaseResult]:
    """Every test of the file at `path` against a real node: a nats-server started for
    the file (natsembed, as a node runs it) and the Forest on it; each test starts from
    purged streams and Soil, publishes its inputs to JetStream, waits until every
    component's consumer has nothing pending (or the component failed), then checks what
    arrived on the Wind, in Humus and in Soil. HTTP brains ask their real servers."""
    import tempfile

    from natsembed import EmbeddedConfig, EmbeddedNats, find_nats_server, free_port
    from nimsforest import natsclient
    from nimsforest.forest.runtime import Forest

    began = time.perf_counter()
    try:
        tf, forest_path, _ = read_test_file(path)
        config = read_forest_config(forest_path)
    except (TestFileError, ForestConfigError) as exc:
        return [CaseResult(path, "(the test file)", (str(exc),), time.perf_counter() - began,
                           error=True)]
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="nimsforest-test-") as tmp:
        node = EmbeddedNats(EmbeddedConfig(
            name="test", data_dir=Path(tmp), binary=find_nats_server(), client_port=free_port(),
            cluster_port=free_port(), monitor_port=0))
        await node.start()
        nc = await natsclient.connect(node.client_url)
        forest = Forest(nc, config, stop_grace=1.0)
        try:
            await forest.start()
            for case in tf.tests:
                t0 = time.perf_counter()
                try:
                    trace = await _live_case(forest, nc, case, tf.soil, settle)
                    failures = check(case.expect, trace)
                except ValueError as exc:
                    failures = [f"the test's input is invalid: {exc}"]
                results.append(CaseResult(path, case.name, tuple(failures),
                                          time.perf_counter() - t0))
        finally:
            await forest.stop()
            await nc.close()
            await node.stop()
            await node.close()
    return results


async def _live_case(forest: Any, nc: Any, case: Case, soil: dict[str, Any],
                     settle: float) -> Trace:
    js = nc.jetstream()
    for stream in ("RIVER", "WIND", "HUMUS", "KV_SOIL"):
        await js.purge_stream(stream)
    kv = await js.key_value("SOIL")
    for entity, value in soil.items():
        await kv.put(soil_key(entity), dumps(value))
    trace = Trace()
    errors_before = {c.ref: c.errors for c in forest.list()}
    seen = [0]

    async def on_wind(msg: Any) -> None:
        seen[0] += 1
        trace.leaves.append(Leaf.from_json(msg.data))

    async def on_humus(msg: Any) -> None:
        seen[0] += 1
        trace.humus.append(Compost.from_json(msg.data))

    subs = [await nc.subscribe("wind.>", cb=on_wind), await nc.subscribe("humus.>", cb=on_humus)]
    try:
        for subject, payload, headers in inputs_of(case):
            await js.publish(subject, payload, headers=headers or None)
        await _settled(forest, js, errors_before, seen, settle)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    for entity in [*case.expect.soil, *soil]:
        entry = await forest.soil.dig(entity)
        if entry.value is not None and not entry.deleted:
            trace.soil[soil_key(entity)] = entry.value
    for c in forest.list():
        if c.errors > errors_before.get(c.ref, 0):
            trace.errors.append((c.ref, c.last_error or "failed"))
    return trace


async def _settled(forest: Any, js: Any, errors_before: dict[ComponentRef, int],
                   seen: list[int], timeout: float) -> None:
    """Until every consumer has nothing pending or unacknowledged (a component that
    failed an event counts as done with it) and no new message came for two looks."""
    import asyncio

    deadline = time.monotonic() + timeout
    quiet, last = 0, -1
    while time.monotonic() < deadline:
        busy = False
        for c in forest.list():
            if not c.consumer or not c.consumes:
                continue
            stream = ("RIVER" if c.consumes.startswith(RIVER_PREFIX) else
                      "HUMUS" if c.consumes.startswith(HUMUS_PREFIX) else "WIND")
            info = await js.consumer_info(stream, c.consumer)
            failed = c.errors > errors_before.get(c.ref, 0)
            if info.num_pending or (info.num_ack_pending and not failed):
                busy = True
        quiet = quiet + 1 if not busy and seen[0] == last else 0
        last = seen[0]
        if quiet >= 2:
            return
        await asyncio.sleep(0.05)


__all__ = [
    "CaseResult",
    "Expect",
    "Simulation",
    "TestFile",
    "TestFileError",
    "check",
    "find_test_files",
    "matches",
    "read_test_file",
    "run_test_file",
    "run_test_file_live",
]
