"""Device mesh and logical-axis sharding rules.

Arrays name their dimensions with logical axes ("embed", "mlp", "vocab", ...); a table of
rules maps each logical axis to mesh axes, as in MaxText and Tunix, so changing the
parallelism layout is a config change and no call site names a mesh axis.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from zppo_jax import run_config

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES = run_config.LOGICAL_AXIS_RULES  # config.mesh.rules' default; rules=None means it


def resolve(rules) -> tuple:
  """`rules` as a table (None: DEFAULT_RULES; lists from a config file become tuples)."""
  if rules is None:
    return DEFAULT_RULES
  return tuple((name, tuple(target) if isinstance(target, list) else target)
               for name, target in rules)


AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}


def make_mesh(shape: Sequence[int] | None = None, axis_names: Sequence[str] = MESH_AXES,
              devices=None, axis_types: str = "auto") -> Mesh:
  """A mesh over all devices (all hosts). `shape` may hold one -1, filled with what is left;
  None puts every device on the first axis (pure data parallelism). `axis_types` is JAX's
  sharding mode for every axis: "auto" (the compiler propagates shardings) or "explicit"
  (array types carry them)."""
  if axis_types not in AXIS_TYPES:
    raise ValueError(f"mesh axis_types must be one of {sorted(AXIS_TYPES)}, got {axis_types!r}")
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(shape, len(devices), axis_names)
  return jax.make_mesh(shape, tuple(axis_names), axis_types=(AXIS_TYPES[axis_types],) * len(shape),
                       devices=devices)


def from_config(mesh_cfg, devices=None) -> tuple[Mesh, tuple]:
  """(mesh, logical-axis rules) of `config.mesh` over `devices` (default: all; a TPU
  topology's for ahead-of-time compilation): its shape and axis types, and its `rules`,
  which may name only the mesh's axes. Pass the rules to whatever places arrays on the
  mesh (`rules=`)."""
  mesh = make_mesh(tuple(mesh_cfg.shape), axis_types=mesh_cfg.axis_types, devices=devices)
  rules = resolve(mesh_cfg.get("rules"))
  for name, target in rules:
    targets = () if target is None else (target,) if isinstance(target, str) else target
    unknown = [t for t in targets if t not in mesh.axis_names]
    if unknown:
      raise ValueError(f"config.mesh.rules: logical axis {name!r} maps to {unknown}, not axes "
                       f"of the mesh {tuple(mesh.axis_names)}")
  return mesh, rules


def mesh_shape(shape: Sequence[int] | None, n: int,
               axis_names: Sequence[str] = MESH_AXES) -> tuple[int, ...]:
  """`shape` over n devices, its one -1 filled in (None: all n on the first axis)."""
  shape = [n] + [1] * (len(axis_names) - 1) if shape is None else list(shape)
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh shape {shape} does not match axis names {tuple(axis_names)}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape} has more than one -1")
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if n % rest:
      raise ValueError(f"mesh shape {shape} does not divide {n} devices")
    shape[shape.index(-1)] = n // rest
  if math.prod(shape) != n:
    raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, {n} are present")
  return tuple(shape)


def explicit_axes(mesh) -> tuple[str, ...]:
  """Names of the mesh's axes in JAX's explicit sharding mode (array types carry them)."""
  return tuple(name for name, kind in zip(mesh.axis_names, mesh.axis_types)
               if kind == AxisType.Explicit)


def mesh_axes_of(name: str | None, mesh: Mesh, rules=None) -> tuple[str, ...]:
  """The mesh axes (present in `mesh`) that logical axis `name` maps to under `rules`."""
  rules = resolve(rules)
  target = dict(rules).get(name) if name is not None else None
  mesh_axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
  return tuple(a for a in mesh_axes if a in mesh.shape)


def shard_count(name: str, mesh: Mesh, rules=None) -> int:
  """How many ways logical axis `name` is split on `mesh` (e.g. batch shards)."""
  return math.prod(mesh.shape[a] for a in mesh_axes_of(name, mesh, rules))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=None) -> PartitionSpec:
  """PartitionSpec for an array of `shape` whose dims are named `axes`.

  A dim whose size the mapped mesh axes do not divide is replicated instead (logged), so a
  small model on a large mesh still places; each mesh axis is used at most once.
  """
  rules = resolve(rules)
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    if name is not None and name not in table:
      raise KeyError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}")
    mesh_axes = tuple(a for a in mesh_axes_of(name, mesh, rules) if a not in used)
    ways = math.prod(mesh.shape[a] for a in mesh_axes)
    if mesh_axes and size % ways:
      logging.info("logical axis %s (size %d) not divisible by mesh axes %s: replicated",
                   name, size, mesh_axes)
      mesh_axes = ()
    used.update(mesh_axes)
    spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*spec)


def bytes_per_device(shape_tree, sharding_tree) -> int:
  """Bytes one device holds of a pytree of arrays (or ShapeDtypeStructs) placed by a matching
  pytree of shardings (on a real or an abstract mesh)."""
  return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
             for x, s in zip(jax.tree.leaves(shape_tree), jax.tree.leaves(sharding_tree)))


def named_shardings(logical_tree, shape_tree, mesh: Mesh, rules=None):
  """Pytree of NamedSharding from a pytree of logical-axis tuples and one of arrays (or
  jax.ShapeDtypeStruct) with the same structure."""
  return jax.tree.map(
      lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules)),
      logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, tuple))
