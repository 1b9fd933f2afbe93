"""Complexity accounting read off the built module: mult-adds and parameters per layer.

Every `nn.Conv`, `nn.Dense` and BatchNorm call is intercepted while the model is
traced by `jax.eval_shape` (nothing is compiled or computed), and its mult-adds are
derived from the shapes it actually saw:

  conv:  output elements x kernel height x kernel width x (input channels / groups)
  dense: output elements x input features

Normalization, activations, pooling, shuffles and additions count no mult-adds (the
papers' convention). Parameters are the trainable ones: kernels, biases, BN scale and
bias (BN moving statistics are not parameters).

  python -m mobileshuffle_jax.complexity --model mobilenet_v1 --width 0.5 --resolution 160
  python -m mobileshuffle_jax.complexity --model shufflenet_v1 --groups 8 --scale 0.5 --json
  python -m mobileshuffle_jax.complexity --paper-tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobileshuffle_jax import layers, models, paper


@dataclasses.dataclass(frozen=True)
class LayerCost:
  name: str  # the module path, e.g. "block3/pointwise/conv"
  kind: str  # "conv", "dense" or "norm"
  output_shape: tuple[int, ...]  # without the batch axis
  mult_adds: int
  params: int


@dataclasses.dataclass(frozen=True)
class Complexity:
  layers: tuple[LayerCost, ...]
  params: int  # counted from the whole parameter tree

  @property
  def mult_adds(self) -> int:
    return sum(layer.mult_adds for layer in self.layers)

  @property
  def mult_adds_classifier(self) -> int:
    return sum(layer.mult_adds for layer in self.layers if layer.kind == "dense")

  def as_dict(self) -> dict[str, int]:
    return {"mult_adds": self.mult_adds, "mult_adds_classifier": self.mult_adds_classifier,
            "mult_adds_without_classifier": self.mult_adds - self.mult_adds_classifier,
            "params": self.params}


def _size(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def count(model: nn.Module, resolution: int | tuple[int, int]) -> Complexity:
  """Mult-adds (per image) and trainable parameters of `model` at `resolution`.

  Counted on the paper's form of the model (lowering 'xla': every conv an `nn.Conv`):
  a faster lowering computes the same convs with the same variables.
  """
  model = models.with_lowering(model, "xla")
  height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
  images = jax.ShapeDtypeStruct((1, height, width, model.input_channels), jnp.float32)
  costs = []

  def record(next_fun, args, kwargs, context):
    outputs = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not isinstance(
        module, (nn.Conv, nn.Dense, layers.BatchNorm)):
      return outputs
    inputs = args[0]
    if isinstance(module, nn.Conv):
      kind = "conv"
      per_output = math.prod(module.kernel_size) * inputs.shape[-1] // module.feature_group_count
    elif isinstance(module, nn.Dense):
      kind, per_output = "dense", inputs.shape[-1]
    else:
      kind, per_output = "norm", 0
    costs.append(LayerCost("/".join(module.path), kind, tuple(outputs.shape[1:]),
                            math.prod(outputs.shape[1:]) * per_output,
                            _size(module.variables.get("params", {}))))
    return outputs

  def init(images):
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), images, train=False)

  variables = jax.eval_shape(init, images)
  return Complexity(tuple(costs), _size(variables["params"]))


def format_table(result: Complexity) -> str:
  """A per-layer table (conv and dense rows; each conv's BN parameters folded into it)."""
  rows, norm_params = [], {}
  for layer in result.layers:
    if layer.kind == "norm":
      norm_params[layer.name.rsplit("/", 1)[0]] = layer.params
  for layer in result.layers:
    if layer.kind != "norm":
      params = layer.params + norm_params.get(layer.name.rsplit("/", 1)[0], 0)
      rows.append((layer.name, "x".join(map(str, layer.output_shape)),
                   f"{layer.mult_adds:,}", f"{params:,}"))
  rows.append(("total", "", f"{result.mult_adds:,}", f"{result.params:,}"))
  header = ("layer", "output", "mult-adds", "params (with BN)")
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
  lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
  lines += ["  ".join((c.ljust(w) if i < 2 else c.rjust(w)) for i, (c, w) in
                      enumerate(zip(row, widths))) for row in rows]
  return "\n".join(lines)


def paper_comparison(rows=paper.ROWS) -> list[dict]:
  """Our counts beside every printed figure of the papers' complexity tables."""
  out = []
  for row in rows:
    result = count(models.build(row.model, **row.options), row.resolution)
    ours = result.mult_adds if row.with_classifier else (
        result.mult_adds - result.mult_adds_classifier)
    out.append({"table": row.table, "model": row.label, "resolution": row.resolution,
                "paper_mult_adds_m": row.mult_adds_m, "mult_adds_m": ours / 1e6,
                "paper_params_m": row.params_m, "params_m": result.params / 1e6,
                "with_classifier": row.with_classifier})
  return out


def format_paper_tables(comparison: list[dict]) -> str:
  lines = []
  for table in dict.fromkeys(c["table"] for c in comparison):
    family = "ShuffleNet" if "ShuffleNet" in next(
        c["model"] for c in comparison if c["table"] == table) else "MobileNet"
    lines.append(f"\n{family} paper Table {table}")
    lines.append(f"{'model':34} {'res':>4} {'M mult-adds paper':>18} {'ours':>8} "
                 f"{'M params paper':>15} {'ours':>6}  FC counted")
    for c in (c for c in comparison if c["table"] == table):
      paper_params = "-" if c["paper_params_m"] is None else f"{c['paper_params_m']:.2f}"
      lines.append(f"{c['model']:34} {c['resolution']:>4} {c['paper_mult_adds_m']:>18.0f} "
                   f"{c['mult_adds_m']:>8.1f} {paper_params:>15} {c['params_m']:>6.2f}  "
                   f"{'yes' if c['with_classifier'] else 'no'}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mobileshuffle_jax.complexity",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=sorted(models.MODELS), default="mobilenet_v1")
  parser.add_argument("--resolution", type=int, default=224)
  parser.add_argument("--width", type=float, default=1.0, help="MobileNet alpha")
  parser.add_argument("--groups", type=int, default=3, help="ShuffleNet groups")
  parser.add_argument("--scale", type=float, default=1.0, help="ShuffleNet scale")
  parser.add_argument("--variant", choices=("full", "shallow"), default=None)
  parser.add_argument("--no-shuffle", action="store_true")
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--paper-tables", action="store_true",
                      help="print our counts beside the papers' complexity tables")
  args = parser.parse_args(argv)

  if args.paper_tables:
    comparison = paper_comparison()
    print(json.dumps(comparison) if args.json else format_paper_tables(comparison))
    return 0
  options = {"num_classes": args.num_classes}
  if args.model == "mobilenet_v1":
    options.update(alpha=args.width, variant=args.variant or "separable")
  else:
    if args.variant == "full":
      parser.error("--variant full exists for mobilenet_v1 only")
    options.update(groups=args.groups, scale=args.scale, shuffle=not args.no_shuffle,
                   variant=args.variant or "standard")
  try:
    result = count(models.build(args.model, **options), args.resolution)
  except ValueError as error:
    parser.error(str(error))
  if args.json:
    print(json.dumps({"model": args.model, "options": options,
                      "resolution": args.resolution, **result.as_dict()}))
  else:
    print(format_table(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
