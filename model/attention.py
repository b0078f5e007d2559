"""Attention dispatch for pyramid (tail-query) attention with left padding.

Every backend computes, per head, softmax(Q K^T / sqrt(d_h) + mask) V for
    q (B, H, Tq, dh)  the LAST Tq of the Tk current tokens (pyramid queries)
    k, v (B, H, Tk, dh)
    q_valid (B, Tq), k_valid (B, Tk)  False at left padding
with the causal part aligned BOTTOM-RIGHT: query i sits at absolute position Tk - Tq + i and sees
keys 0..Tk-Tq+i. (SDPA's is_causal=True aligns top-left when Tq < Tk, which is wrong here.)

Backends:
  "reference"  plain matmul + masked softmax; the ground truth of the parity tests.
  "sdpa"       F.scaled_dot_product_attention with an explicit boolean bottom-right + padding
               mask (a padding mask cannot be combined with causal_lower_right / is_causal).
  "flash"      flash_attn.flash_attn_varlen_func on CUDA in fp16/bf16 (its causal=True is
               bottom-right per sequence); padding is removed (unpadded varlen layout).
  "sdpa_causal" SDPA with NO mask tensor (issue #25): the causal part is SDPA's own bottom-right
               causal variant (torch.nn.attention.bias.causal_lower_right -> the flash kernel on
               CUDA in bf16/fp16, which skips the masked upper triangle), and key padding rides in
               the head dimension: q gets a column of ones, k a column holding 0 (real key) or
               -PAD_BIAS (padded key), v a zero column, all padded to a multiple of 8 (so the
               score of a padded key is q.k - PAD_BIAS and its softmax weight underflows to exactly
               0). The scale stays 1/sqrt(head_dim). With pad_free=True (the caller knows no key is
               padded) the extra columns are left out. Exact up to fp rounding (tested against
               "reference"). The flash kernel runs only where its preconditions hold (CUDA, q/k/v
               all fp16 or bf16, head_dim + pad columns a multiple of 8 and <= 256, 0 < Tq <= Tk);
               elsewhere sdpa_causal runs SDPA with one shared (Tq, Tk) bottom-right mask (CPU, fp32,
               odd head dims: the same function), an empty query list returns an empty result
               without launching anything (a zero-block flash launch is a CUDA "invalid argument"),
               and Tq > Tk (never produced by the model) goes to the plain "sdpa" path, whose mask
               handles queries that see no key. See sdpa_causal_plan().
  "auto"       flash when usable, else sdpa; choose_backend() returns the choice AND the reason.

Padding rules shared by all backends: a padded query's output is exactly zero, and a query that
can see no key (only padded queries can) attends to all keys instead of producing NaN before being
zeroed, so padded content never reaches any valid output or gradient.

Shared keys (`attend(..., shared=SharedKeys(...))`): keys computed once per group of query rows and
read by every row of the group, i.e. a request's S side read by the NS queries of each of its
impressions (request-level forward, KV-cached scoring in model/kv_cache.py). It means exactly
"attend over [the group's shared keys ; the row's own keys]"; SDPA and flash get that list copied per
row, the reference backend reads the shared keys in place (one GEMM per group, no per-row copy).
`SharedKeys.bias` (optional, (R, H, T)) adds a logit per shared key and head, the same for every row
of the group (OneTrans's `recency_bias`: a learned bias by an S key's rank, on NS queries only). The
reference and SDPA backends take it (SDPA as a float mask); flash and sdpa_causal cannot take an
additive bias, so a call with one runs on SDPA (the NS queries only: a few rows per impression).

This module is the one definition of the attention mask and of masked attention in the model package.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("reference", "sdpa", "flash", "sdpa_causal")
# score offset of a padded key in the "sdpa_causal" backend: exp(-PAD_BIAS / sqrt(head_dim)) is 0 in
# fp32 for any head_dim <= 256 (PAD_BIAS / 16 = 1875 >> 104), and it is exact in bf16 / fp16
PAD_BIAS = 30000.0
REQUESTS = ("auto", *BACKENDS)
# Backends that take an explicit mask (attend(..., allowed=...)): the baselines' masks (cross-causal
# global tokens, merged-token groups that see themselves) are not "padding + bottom-right causal",
# which is all flash and sdpa_causal can express.
EXPLICIT_MASK_BACKENDS = ("reference", "sdpa")


def flash_unsupported_reasons(device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """Why flash-attn cannot run these inputs (empty list = it can)."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"flash-attn needs a CUDA device, inputs are on {device.type}")
    if importlib.util.find_spec("flash_attn") is None:
        reasons.append(
            "flash_attn is not installed (pip install 'onetrans-harness[gpu]' on a GPU node)"
        )
    if dtype not in (torch.float16, torch.bfloat16):
        reasons.append(
            f"flash-attn needs fp16/bf16 inputs, got {dtype} (run with precision bf16-mixed)"
        )
    if head_dim % 8 != 0 or head_dim > 256:
        reasons.append(f"flash-attn needs head_dim a multiple of 8 and <= 256, got {head_dim}")
    return reasons


def sdpa_causal_flash_unsupported(
    device: torch.device, dtype: torch.dtype, head_dim: int
) -> list[str]:
    """Why PyTorch's flash kernel cannot run "sdpa_causal" for these static properties (empty = it
    can, for query lists with 0 < Tq <= Tk). The pad columns make the kernel's head dim
    head_dim + _pad_columns(head_dim) when some key is padded."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"it needs a CUDA device, inputs are on {device.type}")
    if dtype not in (torch.float16, torch.bfloat16):
        reasons.append(f"it needs fp16/bf16 inputs, got {dtype}")
    if head_dim + _pad_columns(head_dim) > 256:
        reasons.append(
            f"head_dim {head_dim} + {_pad_columns(head_dim)} pad columns is over its limit of 256"
        )
    return reasons


def choose_backend(
    requested: str, device: torch.device, dtype: torch.dtype, head_dim: int
) -> tuple[str, str]:
    """(backend, reason). An explicit request that cannot run raises instead of falling back silently."""
    if requested not in REQUESTS:
        raise ValueError(f"attention backend {requested!r} unknown; choose one of {REQUESTS}")
    flash_no = flash_unsupported_reasons(device, dtype, head_dim)
    if requested == "flash":
        if flash_no:
            raise RuntimeError(
                "attention='flash' cannot run: "
                + "; ".join(flash_no)
                + ". Use attention='auto' to fall back to SDPA."
            )
        return "flash", "requested"
    if requested == "sdpa_causal":
        no = sdpa_causal_flash_unsupported(device, dtype, head_dim)
        if not no:
            return "sdpa_causal", "requested: PyTorch's flash kernel, bottom-right causal, no mask"
        return "sdpa_causal", (
            "requested; PyTorch's flash kernel cannot run ("
            + "; ".join(no)
            + "): sdpa_causal runs SDPA with one shared (Tq, Tk) bottom-right mask instead "
            "(same function)"
        )
    if requested in ("reference", "sdpa"):
        return requested, "requested"
    if not flash_no:
        return "flash", f"auto: flash-attn usable on {device.type} with {dtype}"
    return "sdpa", "auto: " + "; ".join(flash_no)


def choose_explicit_mask_backend(requested: str) -> tuple[str, str]:
    """(backend, reason) for a model whose attention masks are explicit (the baselines). "auto" is
    the reference backend: plain matmuls that FlopCounterMode counts on every device; ask for "sdpa"
    (torch's fused kernel) on a GPU. flash / sdpa_causal cannot take such masks: an error, not a
    silent fallback."""
    if requested not in REQUESTS:
        raise ValueError(f"attention backend {requested!r} unknown; choose one of {REQUESTS}")
    if requested == "auto":
        return (
            "reference",
            "auto: explicit masks run on the reference backend (pass sdpa for the fused kernel)",
        )
    if requested not in EXPLICIT_MASK_BACKENDS:
        raise ValueError(
            f"attention {requested!r} cannot take this model's explicit attention masks; "
            f"choose one of {('auto', *EXPLICIT_MASK_BACKENDS)}"
        )
    return requested, "requested"


def attention_mask(q_valid: torch.Tensor, k_valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool, True = may attend; bottom-right causal, padded keys masked."""
    tq, tk = q_valid.shape[1], k_valid.shape[1]
    allowed = k_valid[:, None, None, :]
    if causal:
        qpos = torch.arange(tk - tq, tk, device=k_valid.device)
        kpos = torch.arange(tk, device=k_valid.device)
        allowed = allowed & (kpos[None, :] <= qpos[:, None])
    else:
        allowed = allowed.expand(-1, -1, tq, -1)
    # Rows that see nothing (padded queries only) attend everywhere: finite, then zeroed by the caller.
    return allowed | ~allowed.any(-1, keepdim=True)


@dataclass
class Groups:
    """Query rows laid out per group (impressions per request): (R, C) slots, C = the largest group."""

    index: torch.Tensor  # (B,) group of each row
    slot: torch.Tensor  # (B,) position of each row inside its group
    n_groups: int
    width: int

    @staticmethod
    def of(index: torch.Tensor, n_groups: int) -> Groups:
        counts = torch.bincount(index, minlength=n_groups)
        starts = torch.cumsum(counts, 0) - counts
        # a row's slot is its rank among its group's rows; rows need not be sorted by group
        order = torch.sort(index, stable=True).indices
        slot = torch.empty_like(index)
        slot[order] = torch.arange(index.numel(), device=index.device) - starts[index[order]]
        width = int(counts.max().item()) if index.numel() else 0  # one host sync
        return Groups(index=index, slot=slot, n_groups=n_groups, width=width)

    def pack(self, x: torch.Tensor, fill: float | bool = 0) -> torch.Tensor:
        """(B, ...) -> (R, C, ...); slots of smaller groups hold `fill`."""
        out = x.new_full((self.n_groups, self.width, *x.shape[1:]), fill)
        return out.index_put((self.index, self.slot), x)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C, ...) -> (B, ...)."""
        return x[self.index, self.slot]


@dataclass
class SharedKeys:
    """Keys/values shared by each group of query rows, placed before the rows' own keys.

    With a bottom-right causal mask every query sees all valid shared keys, as an NS query sees every
    S key of its request. `groups` is the per-group layout of `index` when the caller has it already
    (building it costs a host sync; the reference backend needs it, SDPA and flash do not).
    """

    k: torch.Tensor  # (R, H, T, dh)
    v: torch.Tensor  # (R, H, T, dh)
    valid: torch.Tensor  # (R, T) False at padding
    index: torch.Tensor  # (B,) group of each query row
    groups: Groups | None = None
    bias: torch.Tensor | None = None  # (R, H, T) logit added to each shared key, per head


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # statistics in fp32: under bf16 autocast the row sums lose precision otherwise
    return torch.softmax(scores.masked_fill(~mask, float("-inf")).float(), dim=-1).to(dtype)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    shared: SharedKeys | None = None,
) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    if shared is None:
        return _masked_softmax((q @ k.transpose(-1, -2)) * scale, mask, v.dtype) @ v
    # Shared keys are read in place: in the per-group layout (R, H, C*Tq, ...) all rows of a group meet
    # the group's keys in one GEMM, so the (R, T) keys are never copied per row. The mask (over the
    # concatenated key list, built by the caller) is the same one SDPA and flash get.
    g = shared.groups if shared.groups is not None else Groups.of(shared.index, shared.k.shape[0])
    tq, t = q.shape[2], shared.k.shape[2]

    def grouped(
        x: torch.Tensor, fill: float | bool = 0
    ) -> torch.Tensor:  # (B, h, Tq, X) -> (R, h, C*Tq, X)
        return g.pack(x, fill).transpose(1, 2).flatten(2, 3)

    def ungrouped(x: torch.Tensor) -> torch.Tensor:  # (R, H, C*Tq, X) -> (B, H, Tq, X)
        return g.unpack(x.unflatten(2, (g.width, tq)).transpose(1, 2))

    to_shared = grouped(q) @ shared.k.transpose(-1, -2) * scale
    if shared.bias is not None:
        to_shared = to_shared + shared.bias.unsqueeze(2).to(to_shared.dtype)
    scores = torch.cat([to_shared, grouped(q @ k.transpose(-1, -2)) * scale], -1)
    # empty slots (groups with fewer rows than C) attend everywhere: finite (no NaN in the backward), never unpacked
    probs = _masked_softmax(scores, grouped(mask, True), v.dtype)
    return ungrouped(probs[..., :t] @ shared.v) + ungrouped(probs[..., t:]) @ v


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """bias: an additive logit broadcastable to (B, H, Tq, Tk), applied where mask allows."""
    if bias is not None:
        neg_inf = torch.tensor(float("-inf"), dtype=q.dtype, device=q.device)
        mask = torch.where(mask, bias.to(q.dtype), neg_inf)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _pad_columns(dh: int) -> int:
    """Extra head-dim columns of sdpa_causal: at least one, up to the next multiple of 8."""
    return 8 - dh % 8 if dh % 8 else 8


def sdpa_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_valid: torch.Tensor,
    causal: bool,
    pad_free: bool = False,
) -> torch.Tensor:
    """Mask-free SDPA (see the module doc): bottom-right causal by SDPA itself, key padding as a key
    bias carried by extra head-dim columns. Padded query rows are finite (the caller zeroes them)."""
    B, H, tq, dh = q.shape
    tk = k.shape[2]
    scale = 1.0 / math.sqrt(dh)
    if not pad_free:
        e = _pad_columns(dh)
        qx = q.new_zeros(B, H, tq, e)
        qx[..., 0] = 1.0
        kx = k.new_zeros(B, H, tk, e)
        kx[..., 0] = torch.where(k_valid, 0.0, -PAD_BIAS).to(k.dtype)[:, None, :]
        q = torch.cat([q, qx], -1)
        k = torch.cat([k, kx], -1)
        v = F.pad(v, (0, e))
    if not causal:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    elif tq == tk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    elif _flash_usable(q, k, v):
        # PyTorch's flash kernel: its is_causal means bottom-right when tq < tk (what
        # torch.nn.attention.bias.causal_lower_right dispatches to; called directly because that
        # tensor subclass breaks torch.compile graphs)
        out = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, True, False, scale=scale
        )[0]
    else:  # CPU / fp32 / old GPUs: a (tq, tk) bottom-right mask, shared by every row and head
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    return out if pad_free else out[..., :dh]


def _flash_usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """PyTorch's own flash kernel can take q, k, v (B, H, T, dh): CUDA, all three fp16/bf16 of one
    dtype, a contiguous last dim, head_dim a multiple of 8 and <= 256, and a non-empty query and key
    list (a zero-block launch fails with "invalid argument"; sdpa_causal_plan() keeps Tq = 0 away
    from here anyway). It also needs sm80+, as bf16 itself does; no device query here, so
    torch.compile traces it."""
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k.dtype == q.dtype
        and v.dtype == q.dtype
        and all(t.stride(-1) == 1 for t in (q, k, v))
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and q.shape[2] > 0
        and k.shape[2] > 0
    )


def sdpa_causal_plan(tq: int, tk: int, causal: bool) -> str:
    """What attend(backend="sdpa_causal") does with Tq queries over Tk keys (shapes only, no sync):
    "empty"        Tq = 0 (a layer that keeps no S query, e.g. the KV cache's stage I at the last
                   layer): the (B, H, 0, dh) result, no kernel launched (PyTorch's flash kernel would
                   be launched with zero blocks: CUDA error "invalid argument");
    "sdpa"         causal with Tq > Tk: the first queries see no key, which only the explicit mask of
                   the plain "sdpa" path handles by the module's rule (never produced by the model);
    "sdpa_causal"  everything else (sdpa_causal_attention picks flash or its masked form)."""
    if tq == 0:
        return "empty"
    if causal and tq > tk:
        return "sdpa"
    return "sdpa_causal"


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_valid: torch.Tensor,
    k_valid: torch.Tensor,
    causal: bool,
) -> torch.Tensor:
    """Varlen flash-attn on the unpadded tokens. Left padding keeps every row's valid tokens a
    contiguous tail, so flash's per-sequence bottom-right alignment equals our mask."""
    from flash_attn import flash_attn_varlen_func  # optional GPU extra

    B, H, tq, dh = q.shape
    tk = k.shape[2]

    def unpad(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)[valid]  # (n_valid, H, dh)

    def cu(valid: torch.Tensor) -> torch.Tensor:
        return F.pad(valid.sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))

    out = flash_attn_varlen_func(
        unpad(q, q_valid),
        unpad(k, k_valid),
        unpad(v, k_valid),
        cu(q_valid),
        cu(k_valid),
        tq,
        tk,
        causal=causal,
    )
    full = q.new_zeros(B, tq, H, dh)
    full[q_valid] = out.to(q.dtype)
    return full.transpose(1, 2)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_valid: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
    *,
    causal: bool = False,
    backend: str,
    shared: SharedKeys | None = None,
    pad_free: bool = False,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch to one backend; returns (B, H, Tq, dh) with padded query rows set to zero.
    shared: keys/values of each row's group, placed before its own keys k, v (see SharedKeys).
    pad_free: the caller guarantees k_valid is all True (only "sdpa_causal" uses it: no pad columns).
    allowed: an explicit bool mask broadcastable to (B, H, Tq, Tk), True where a query may look,
    instead of q_valid / k_valid / causal (the baselines; EXPLICIT_MASK_BACKENDS only). Every row
    must allow at least one key (the caller guarantees it; nothing is zeroed)."""
    if allowed is not None:
        if q_valid is not None or k_valid is not None or causal or shared is not None:
            raise ValueError("attend: allowed= replaces q_valid, k_valid, causal and shared")
        if backend == "reference":
            return reference_attention(q, k, v, allowed)
        if backend == "sdpa":
            return sdpa_attention(q, k, v, allowed)
        raise ValueError(
            f"attention backend {backend!r} cannot take an explicit mask; "
            f"choose one of {EXPLICIT_MASK_BACKENDS}"
        )
    if q_valid is None or k_valid is None:
        raise ValueError("attend: pass q_valid and k_valid (or an explicit allowed= mask)")
    bias = None
    if shared is not None:
        k_valid = torch.cat([shared.valid[shared.index], k_valid], 1)
        if shared.bias is not None and backend != "reference":
            # flash and sdpa_causal take no additive bias: SDPA with a float mask instead
            backend = "sdpa"
            own = shared.bias.new_zeros(q.shape[0], shared.bias.shape[1], k.shape[2])
            bias = torch.cat([shared.bias[shared.index], own], 2).unsqueeze(2)  # (B, H, 1, Tk)
        # SDPA and flash need every row's whole key list: copy it per row
        if backend != "reference":
            k = torch.cat([shared.k[shared.index], k], 2)
            v = torch.cat([shared.v[shared.index], v], 2)
            shared = None
    if backend == "flash":
        return flash_attention(q, k, v, q_valid, k_valid, causal)
    if backend == "sdpa_causal":
        plan = sdpa_causal_plan(q.shape[2], k.shape[2], causal)
        if plan == "empty":
            return q.new_zeros(q.shape[0], q.shape[1], 0, v.shape[-1], dtype=v.dtype)
        if plan == "sdpa_causal":
            out = sdpa_causal_attention(q, k, v, k_valid, causal, pad_free)
            return out * q_valid[:, None, :, None].to(out.dtype)
        backend = "sdpa"  # explicit fallback (see sdpa_causal_plan)
    mask = attention_mask(q_valid, k_valid, causal)
    if backend == "reference":
        out = reference_attention(q, k, v, mask, shared)
    elif backend == "sdpa":
        out = sdpa_attention(q, k, v, mask, bias)
    else:
        raise ValueError(f"attention backend {backend!r} unknown; choose one of {BACKENDS}")
    return out * q_valid[:, None, :, None].to(out.dtype)
