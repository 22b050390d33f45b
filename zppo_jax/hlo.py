"""What a compiled program's optimized HLO text says that its cost analysis does not: the
bytes its collectives move, with every loop's trips counted.

XLA's `cost_analysis()` counts a while loop's body once and leaves collectives out, so it
cannot tell a decode step that gathers every layer's weights over the FSDP axis (tens of
GB a step over the chips' interconnect) from one that moves a few MB of activations. This
reads the text of `compiled.as_text()`: each computation's collectives (the bytes of their
results on one device; of a reduce-scatter, its input), and the call graph with each
loop's trips (XLA's `known_trip_count`, or a `counter < N` condition: the layer scan, a
windowed matmul's steps). A loop whose trips are not known (the decode loop, which stops
when every row has) is reported per trip. Each collective's bytes are also credited to the
JAX operation it came from (its `op_name` metadata, e.g. `transpose(jvp(jit(_take)))/
scatter-add`: the gradient of a token lookup), which says what a sharding fix must change.
"""

from __future__ import annotations

import dataclasses
import math
import re

# ops whose result is what a device receives or holds after the exchange; the async
# "-start" halves are skipped (their "-done" carries the result)
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute", "ragged-all-to-all")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\(%?([\w.\-]*)")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
ITEMSIZE = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
            "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
            "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(ITEMSIZE) + r")\[([\d,]*)\]")
_CALLEES = re.compile(r"\b(calls|to_apply|body|condition|branch_computations)="
                      r"(\{[^}]*\}|%[\w.\-]+)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONSTANT = re.compile(r"^\s*%([\w.\-]+)\s*=\s*[su]\d+\[\]\S*\s+constant\((\d+)\)")
_BELOW = re.compile(r"^\s*ROOT\s.*\scompare\(%[\w.\-]+,\s*%([\w.\-]+)\),\s*direction=LT")
_SOURCE = re.compile(r'op_name="(?:jit\([\w.\-]+\)/)?([^"]*)"')


def _bytes(shape_text: str) -> int:
  """Bytes of a result type: an array, or a tuple of them."""
  return sum(math.prod(int(d) for d in dims.split(",") if d) * ITEMSIZE[dtype]
             for dtype, dims in _ARRAY.findall(shape_text))


@dataclasses.dataclass
class Computation:
  # (op, JAX source) -> bytes, once through
  collectives: dict = dataclasses.field(default_factory=dict)
  # (callee, trips): 1 for a call or fusion, a loop body's trips (None: not known)
  calls: list = dataclasses.field(default_factory=list)
  constants: dict = dataclasses.field(default_factory=dict)     # %name -> integer value
  below: int | None = None  # a loop condition `counter < constant`: the constant


def parse(text: str) -> tuple[dict[str, Computation], str]:
  """The computations of an HLO module's text, and the name of its entry."""
  comps: dict[str, Computation] = {}
  results: dict[str, str] = {}   # value -> its result type (operands are named, not typed)
  entry = current = None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head and "=" not in line.split("(")[0]:
      current = comps.setdefault(head.group(1), Computation())
      if line.startswith("ENTRY"):
        entry = head.group(1)
      continue
    if current is None:
      continue
    constant, below = _CONSTANT.match(line), _BELOW.match(line)
    if constant:
      current.constants[constant.group(1)] = int(constant.group(2))
    if below and below.group(1) in current.constants:
      current.below = current.constants[below.group(1)]
    op = _OP.match(line)
    if not op:
      continue
    value, result, name, operand = op.groups()
    results[value] = result
    base = name.removesuffix("-done")
    if base in COLLECTIVES and not name.endswith("-start"):
      # a reduce-scatter sends and sums its whole input (its result is 1/n of it)
      moved = _bytes(results.get(operand, "") if base == "reduce-scatter" else result)
      source = _SOURCE.search(line)
      key = (base, source.group(1) if source else "")
      current.collectives[key] = current.collectives.get(key, 0) + moved
    trips = _TRIPS.search(line)
    named = dict(_CALLEES.findall(line))
    for kind, callees in named.items():
      if kind == "condition":
        continue
      n = (int(trips.group(1)) if trips else 0) if kind == "body" else 1
      condition = named.get("condition", "%").lstrip("%") if kind == "body" else None
      for callee in re.findall(r"%([\w.\-]+)", callees):
        current.calls.append((callee, n, condition))
  if entry is None:
    raise ValueError("not an HLO module's text: no ENTRY computation")
  # a loop XLA gives no trip count: `counter < N` counts N trips from 0 (a scan, a windowed
  # matmul); any other condition (the decode loop's) is left unknown (None)
  for c in comps.values():
    c.calls = [(callee, n or (comps[cond].below if cond in comps else None))
               for callee, n, cond in c.calls]
  return comps, entry


def collective_bytes(text: str) -> dict:
  """Bytes of collective results one device gets: `per_call` (every loop with a known trip
  count counted that many times; a loop without one, once) and, where the program has a
  loop of unknown trips (a decode loop), `per_trip` of the outermost such loop. Each is
  {op: bytes} with a "total"; `per_call_sources` (and `per_trip_sources`) give the same
  bytes by the JAX operation each collective came from, largest first."""
  comps, entry = parse(text)

  def total(name: str, seen=()) -> dict:
    if name in seen or name not in comps:
      return {}
    c = comps[name]
    out = dict(c.collectives)
    for callee, trips in c.calls:
      for op, b in total(callee, seen + (name,)).items():
        out[op] = out.get(op, 0) + b * (trips or 1)
    return out

  def outer_unknown(name: str, seen=()):
    """The body of the first loop without a known trip count, breadth-first from `name`."""
    frontier = [name]
    while frontier:
      nxt = []
      for n in frontier:
        for callee, trips in comps.get(n, Computation()).calls:
          if callee in seen:
            continue
          seen += (callee,)
          if trips is None:  # only a loop body has no trip count
            return callee
          nxt.append(callee)
      frontier = nxt
    return None

  def by(counts: dict, part: int) -> dict:
    out = {}
    for key, b in counts.items():
      out[key[part]] = out.get(key[part], 0) + b
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))

  out = {}
  loop = outer_unknown(entry)
  for name, root in (("per_call", entry), ("per_trip", loop)):
    if root:
      counts = total(root)
      out[name] = {**by(counts, 0), "total": sum(counts.values())}
      out[f"{name}_sources"] = by(counts, 1)
  return out

