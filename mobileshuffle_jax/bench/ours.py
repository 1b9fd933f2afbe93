"""Our model's figures under one conv lowering, and the matmul rate they are set against."""

from __future__ import annotations

from mobileshuffle_jax.bench import figures
from mobileshuffle_jax.timing import measure


def measure_jax(spec: dict) -> dict:
  """Our model's figures under one conv lowering (see `mobileshuffle_jax.bench.__main__`).

  The training step is training's own (`train_step.make_train_step`) with plain
  SGD-momentum, jitted with the state donated.
  """
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  import optax

  from mobileshuffle_jax import models, preprocessing, train_step

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[spec["dtype"]]
  model = models.build(spec["model"], lowering=spec["lowering"], dtype=dtype,
                       **spec["options"])
  batch, resolution, repeats = spec["batch"], spec["resolution"], spec["repeats"]
  rng = np.random.default_rng(0)
  pixels = jnp.asarray(rng.integers(0, 256, (batch, resolution, resolution, 3)), jnp.uint8)
  images = preprocessing.normalize(pixels, "imagenet")
  labels = jnp.asarray(rng.integers(0, model.num_classes, batch), jnp.int32)
  examples = {"images": pixels, "labels": labels}  # as the input pipeline delivers them
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
  learning_rate = 0.01
  optimizer = optax.sgd(learning_rate, momentum=0.9)
  state = train_step.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=optimizer.init(variables["params"]),
      ema_params=None)
  step_fn = train_step.make_train_step(
      model, optimizer, optax.constant_schedule(learning_rate),
      ml_collections.ConfigDict({"label_smoothing": 0.0, "ema_decay": 0.0,
                                 "data": {"normalization": "imagenet"}}))
  step_rng = jax.random.key(1)

  def infer(variables, images):
    return model.apply(variables, images, train=False)

  rss_before = figures.peak_rss_bytes()
  compiled_train, compile_train_s = figures.timed(
      lambda: jax.jit(step_fn, donate_argnums=0).lower(state, examples, step_rng).compile())
  compiled_infer, compile_infer_s = figures.timed(
      lambda: jax.jit(infer).lower(variables, images).compile())
  infer_one = jax.jit(infer).lower(variables, images[:1]).compile()

  def run_train():
    nonlocal state
    state, _ = compiled_train(state, examples, step_rng)
    jax.block_until_ready(state)

  train = measure(run_train, repeats)
  # The training step donated the arrays `variables` started with.
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  inference = measure(lambda: compiled_infer(variables, images).block_until_ready(), repeats)
  latency = measure(lambda: infer_one(variables, images[:1]).block_until_ready(),
                    max(repeats, 10))
  result = figures.from_timings(batch, train, inference, latency, compile_train_s,
                                compile_infer_s, rss_before)
  for name, compiled in (("train", compiled_train), ("infer", compiled_infer)):
    analysis = compiled.memory_analysis()
    if analysis is not None:
      result["memory"][f"{name}_temp_bytes"] = int(analysis.temp_size_in_bytes)
    # XLA's own count of the bytes the compiled program reads and writes: the memory side
    # of the roofline (`results.add_roofline`).
    cost = compiled.cost_analysis()
    if cost and cost.get("bytes accessed"):
      result[f"{name}_bytes_per_image"] = float(cost["bytes accessed"]) / batch
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    result["memory"]["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  result["inference_batching"] = inference_batching(model, spec["lowering"], images)
  chosen = {"cpu_kernels": spec["cpu_kernels"]} if "cpu_kernels" in spec else {}
  return {"framework": "jax", "lowering": spec["lowering"], **chosen,
          "resolved_lowering": models.resolve_lowering(spec["lowering"], device.platform),
          "versions": f"JAX {jax.__version__}", "backend": device.platform,
          "device": device.device_kind, **result}


def inference_batching(model, lowering: str, images) -> str:
  """How `model` under `lowering` runs its inference of `images` here, in words."""
  import jax

  from mobileshuffle_jax import fast, layers, models
  from mobileshuffle_jax.fast import batching

  resolved = models.with_lowering(model, models.resolve_lowering(lowering,
                                                                 jax.default_backend()))
  batch = images.shape[0]
  if not isinstance(resolved.batching, fast.InCacheChunks):
    return f"the whole batch of {batch}"
  network = layers.inference_logits
  chunk = resolved.batching.planned_chunk(resolved, network, images)
  if chunk >= batch:
    return f"the whole batch of {batch}"
  largest = batching.largest_activation_bytes(resolved, network, images[:1])
  return (f"chunks of {chunk} of the batch of {batch} (largest activation "
          f"{largest / 2**20:.1f} MiB per image, last-level cache "
          f"{batching.last_level_cache_bytes() / 2**20:.0f} MiB)")


def measure_matmul(spec: dict) -> dict:
  """The device, and the GFLOP/s of a `size` x `size` matmul on it in our compute `dtype`:
  a practical ceiling for the models' rate (a worker of its own, so that the benchmark's
  parent process never initializes a device and holds none of its memory)."""
  import jax
  import jax.numpy as jnp

  size, dtype = spec["size"], {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[spec["dtype"]]
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  matmul = jax.jit(jnp.matmul)
  wall_s = measure(lambda: matmul(a, b).block_until_ready(), spec["repeats"]).wall_s
  # Memory bandwidth: one read and one write of a 256 MiB array.
  array = jnp.zeros(2**26, jnp.float32)
  increment = jax.jit(lambda x: x + 1)
  copy_s = measure(lambda: increment(array).block_until_ready(), spec["repeats"]).wall_s
  device = jax.devices()[0]
  return {"framework": "matmul", "backend": device.platform, "device": device.device_kind,
          "dtype": spec["dtype"], "size": size, "gflops": 2 * size**3 / wall_s / 1e9,
          "memory_gb_per_s": 2 * array.nbytes / copy_s / 1e9}
