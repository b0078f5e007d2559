"""Small layers shared by OneTrans (and reusable by the baselines).

RMSNorm      pre-norm used by every OneTrans block (computed in fp32 for bf16 stability); one fused
             F.rms_norm call (fused=True, default) or the plain composite reference (fused=False).
MixedLinear  the paper's "mixed" parameterisation: one shared weight for all S-token rows and
             one token-specific weight per NS-token row, applied as one batched einsum over a
             (n_ns, d_in, d_out) tensor, never a Python loop over tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / rms(x) * g. One gain vector shared by S- and NS-tokens (spec §5.8)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.fused = True  # execution switch (OneTrans(fused_ops=...)): same function either way

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32: under bf16 autocast the mean of squares loses precision otherwise.
        if (
            self.fused
        ):  # one kernel on CUDA (forward and backward) instead of ~6 element-wise passes
            return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)
        return self.reference(x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain composite form (the parity tests' reference)."""
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    # The same bound nn.Linear uses by default, so shared and token-specific weights start alike.
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


class MixedLinear(nn.Module):
    """Bias-free projection with a shared weight for S rows and one weight per NS row.

    mixed=False ties every NS row to the shared weight (Table 3 "shared parameters" ablation).
    with_s=False leaves out the shared weight when no S row is ever projected (e.g. the query path
    of a last layer that keeps only NS-tokens): an unused parameter would break DDP and inflate
    the parameter count.
    """

    def __init__(
        self, d_in: int, d_out: int, n_ns: int, *, mixed: bool = True, with_s: bool = True
    ) -> None:
        super().__init__()
        self.d_in, self.d_out, self.n_ns, self.mixed = d_in, d_out, n_ns, mixed
        self.weight_s = nn.Parameter(torch.empty(d_out, d_in)) if (with_s or not mixed) else None
        self.weight_ns = nn.Parameter(torch.empty(n_ns, d_in, d_out)) if mixed else None
        for w in (self.weight_s, self.weight_ns):
            if w is not None:
                _uniform_(w, d_in)

    def forward_s(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T_s, d_in) -> (..., T_s, d_out): one GEMM for all S rows."""
        if self.weight_s is None:
            raise RuntimeError("MixedLinear built with with_s=False has no S-token weight")
        return F.linear(x, self.weight_s)

    def forward_ns(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_ns, d_in) -> (B, n_ns, d_out): row t uses weight_ns[t] (one batched GEMM)."""
        if self.weight_ns is None:
            return F.linear(x, self.weight_s)
        return torch.einsum("bti,tio->bto", x, self.weight_ns)

    def forward_ns_loop(self, x: torch.Tensor) -> torch.Tensor:
        """Plain per-token loop: the reference the einsum is tested and benchmarked against."""
        if self.weight_ns is None:
            return F.linear(x, self.weight_s)
        return torch.stack([x[:, t] @ self.weight_ns[t] for t in range(self.n_ns)], dim=1)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, n_ns={self.n_ns}, mixed={self.mixed}, with_s={self.weight_s is not None}"
