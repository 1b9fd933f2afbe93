"""XLA:CPU's kernels for matrix products and convolutions, chosen at package import.

jaxlib 0.10's XLA:CPU hands each dot and convolution it can to YNNPACK (its `ynn_fusion`s)
and runs the rest on its own (Eigen) kernels; XLA_FLAGS can keep them all on its own. XLA
reads XLA_FLAGS once, when the process first uses a device, so the choice is made when the
package is imported, like the allocator's: MOBILESHUFFLE_JAX_CPU_KERNELS names one of
`LIBRARIES` (default `DEFAULT`). Library flags already in XLA_FLAGS win; a choice made
after the process's devices are up cannot apply and says so.

The default is jaxlib's own choice because neither wins both networks. Measured with
`python -m mobileshuffle_jax.bench --peers --cpu-kernels all --rounds 3` (224 px, batch
32, `auto`) on a 2-core AMD EPYC (family 25, model 1: Zen 3, AVX2), 2026-12-01: XLA's own
kernels ran MobileNet v1 1.0 inference at 74.7 img/s against YNNPACK's 66.1 (training
level, 14.2 / 14.5), but ShuffleNet 1x g3's training step at 26.3 against 29.6 (inference
level, 154.8 / 158.9). On Zen 4 (family 25, model 17) the picture moves with the host:
MobileNet inference (XLA's kernels first) level on a quiet one (120.6 / 120.9,
2026-12-01), 109.8 against 82.9 on a busy one the next day, training 17.0 against 18.2.
The flags are read once per process, so a process serving only MobileNet may set
MOBILESHUFFLE_JAX_CPU_KERNELS=xla. Per-program choices
(`compile(compiler_options={"xla_cpu_experimental_ynn_fusion_type": ...})` takes the enum
names, e.g. LIBRARY_FUSION_TYPE_REDUCE) would let inference and training differ in one
process; not done while no CPU measured shows a steady gain: on that Zen 4 machine
(2026-12-02), both compiled that way in one process and timed alternately, XLA's own
kernels ran MobileNet's inference 1.01x and its training step 0.99x to 1.03x as fast,
where separate processes had differed by up to 1.3x.

The oneDNN and XNNPACK dot fusions (`--xla_cpu_experimental_onednn_fusion_type=dot`,
`--xla_cpu_experimental_xnn_fusion_type=dot`) are not offered: with jaxlib 0.10.2 on that
CPU they left every dot of both networks as it was (YNNPACK's, or XLA's with YNNPACK off),
so there is nothing of theirs to measure. Nor are YNNPACK's other fusion types: adding
`dot,eltwise` made MobileNet inference 2x slower on Zen 4 without AVX-512 (2026-12-01),
and taking reductions back to XLA (`-reduce`) made its training step 3x slower on Zen 4
with it (2026-12-02). Both choices compute the same models: `tests/test_cpu_kernels.py`
runs both networks under each on the machine at hand, checks which kernels the compiled
programs hold, and holds logits and gradients to each other.
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "MOBILESHUFFLE_JAX_CPU_KERNELS"
LIBRARIES = {
    "ynnpack": (),  # jaxlib's own choice
    "xla": ("--xla_cpu_experimental_ynn_fusion_type=-individual_dot,-individual_convolution",),
}
DEFAULT = "ynnpack"
# XLA_FLAGS that choose a kernel library: with any of these set by hand, the hand wins.
_LIBRARY_FLAGS = ("--xla_cpu_use_onednn", "--xla_cpu_experimental_onednn_fusion_type",
                  "--xla_cpu_use_xnnpack", "--xla_cpu_experimental_xnn_fusion_type",
                  "--xla_cpu_experimental_xnn_graph_fusion_mode",
                  "--xla_cpu_experimental_ynn_fusion_type")
_state: dict = {}


def choose() -> str:
  """Applies the chosen library's XLA flags once per process; returns what was done.

  A ValueError names the variable if MOBILESHUFFLE_JAX_CPU_KERNELS is not a library.
  """
  if "status" in _state:
    return _state["status"]
  name = os.environ.get(ENV_VAR, DEFAULT)
  if name not in LIBRARIES:
    raise ValueError(f"{ENV_VAR}={name!r} is not a kernel library: choose one of "
                     f"{', '.join(LIBRARIES)}")
  xla_flags = os.environ.get("XLA_FLAGS", "")
  by_hand = [flag for flag in xla_flags.split() if flag.split("=")[0] in _LIBRARY_FLAGS]
  if by_hand:
    status = f"as XLA_FLAGS sets them ({' '.join(by_hand)})"
  elif not LIBRARIES[name]:
    status = name
  elif devices_are_up():
    status = f"jaxlib's defaults ({ENV_VAR}={name} came after the devices were up)"
  else:
    os.environ["XLA_FLAGS"] = " ".join([xla_flags, *LIBRARIES[name]]).strip()
    status = f"{name} ({' '.join(LIBRARIES[name])})"
  _state["status"] = status
  return status


def devices_are_up() -> bool:
  """Whether this process's XLA clients exist: flags and options read at their creation
  can no longer change."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bridge is not None and bridge.backends_are_initialized()
