"""KV-cached OneTrans: two-stage scoring, request-level training, cross-request incremental cache.

OneTrans's S-tokens never attend to NS-tokens (causal mask, S first), so every S-row of every
layer depends on the behaviour sequence only. Stage I runs the S-side once per request (with the
pyramid) and keeps, for every layer, the keys/values of the S-rows entering that layer; stage II
runs only the candidates' NS-rows, attending to that cache and causally to earlier NS-rows.
The derivation, the cross-request reuse rule and the tolerances are in docs/kv-cache.md.

This module reads the weights of a built OneTrans model through `OneTransParts` (the small set of
per-token-type operations the two stages need) and never changes the model: the plain
`model(batch)` stays the reference every path here is tested against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .features import IMPRESSION_KEYS, SEQ_KEYS

# --------------------------------------------------------------------------------------------
# What the two stages need from a OneTrans model
# --------------------------------------------------------------------------------------------


class LayerParts(Protocol):
    """One OneTrans block split by token type. Tensors are (rows, T, d) unless stated."""

    n_heads: int
    keep_s: int          # S-rows this layer keeps as queries (frame positions, padding included)

    def s_qkv(self, x: Tensor, n_query: int, n_kv: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-norm + shared S projections: q for the last n_query rows, k/v for the last n_kv rows
        (all rows when None). Each (R, rows, H, dh)."""

    def ns_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-norm + token-specific NS projections of (B, L_NS, d): q, k, v each (B, L_NS, H, dh)."""

    def s_finish(self, x_kept: Tensor, attn: Tensor) -> Tensor:
        """Residual + shared out-projection + pre-norm shared FFN for kept S rows. attn: (R, q, H*dh)."""

    def ns_finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Residual + token-specific out-projection + pre-norm token-specific FFN for NS rows."""


class OneTransParts(Protocol):
    """The model seen as: S tokenizer, NS tokenizer, blocks split by token type, heads."""

    layers: Sequence[LayerParts]

    def s_tokens(self, seq: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(R, L_S, d) S-tokens and (R, L_S) bool mask (True = real token) from the seq_* tensors."""

    def ns_tokens(self, imp: dict[str, Tensor], seq: dict[str, Tensor]) -> Tensor:
        """(B, L_NS, d) NS-tokens from the per-impression tensors (req_index points into seq)."""

    def heads(self, ns_final: Tensor, s_final: Tensor | None, s_mask: Tensor | None) -> dict[str, Tensor]:
        """Task logits {"ctr", "cvr"} (B,) from the final NS rows (and surviving S rows, if any)."""


# --------------------------------------------------------------------------------------------
# Attention pieces (plain math; fp32 softmax statistics like the model's reference path)
# --------------------------------------------------------------------------------------------


def _s_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, backend: str = "sdpa") -> Tensor:
    """Causal self-attention of the last q rows of an S list over all T rows (bottom-right aligned).

    q (R, q, H, dh), k/v (R, T, H, dh), key_mask (R, T) True = real. A query always sees itself,
    so a padded query row never has an empty key set (its value is never read by a real row).
    """
    R, nq, H, dh = q.shape
    T = k.shape[1]
    qpos = torch.arange(T - nq, T, device=q.device)
    kpos = torch.arange(T, device=q.device)
    causal = kpos.unsqueeze(0) <= qpos.unsqueeze(1)                          # (q, T)
    allowed = causal & (key_mask.unsqueeze(1) | (kpos.unsqueeze(0) == qpos.unsqueeze(1)))  # (R, q, T)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == "reference":   # plain masked softmax (fp32 statistics), the parity ground truth
        scores = (qh @ kh.transpose(-1, -2)) * (1.0 / math.sqrt(dh))
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        out = torch.softmax(scores.float(), -1).to(vh.dtype) @ vh
    else:
        out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed.unsqueeze(1))
    return out.transpose(1, 2).reshape(R, nq, H * dh)


@dataclass
class _Groups:
    """Impressions laid out per request: (R, C) slots, C = most candidates of any request."""

    req: Tensor     # (B,) request row of each impression
    slot: Tensor    # (B,) position of each impression inside its request
    n_req: int
    width: int

    @staticmethod
    def of(req_index: Tensor, n_req: int) -> "_Groups":
        counts = torch.bincount(req_index, minlength=n_req)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(req_index.numel(), device=req_index.device) - starts[req_index]
        width = int(counts.max().item()) if req_index.numel() else 0        # one sync per batch
        return _Groups(req=req_index, slot=slot, n_req=n_req, width=width)

    def pack(self, x: Tensor) -> Tensor:
        """(B, ...) -> (R, C, ...) zero-padded."""
        out = x.new_zeros((self.n_req, self.width, *x.shape[1:]))
        return out.index_put((self.req, self.slot), x)

    def unpack(self, x: Tensor) -> Tensor:
        """(R, C, ...) -> (B, ...)."""
        return x[self.req, self.slot]


def _ns_attention(q: Tensor, k: Tensor, v: Tensor, ks: Tensor, vs: Tensor, s_mask: Tensor,
                  groups: _Groups) -> Tensor:
    """NS queries over [cached S keys of their request ; causal NS keys of their own candidate].

    q/k/v (B, N, H, dh) NS rows; ks/vs (R, T, H, dh) the request's S keys/values; s_mask (R, T).
    Everything runs in the per-request layout (R, H, C*N, ...): all candidates' queries of a request
    meet its S cache in one GEMM (no (B, T) copy of the cache), and the softmax over the two key
    sets is combined through a shared row maximum instead of concatenating the score tensors.
    Softmax statistics in fp32.
    """
    B, N, H, dh = q.shape
    R, T = ks.shape[0], ks.shape[1]
    scale = 1.0 / math.sqrt(dh)

    def grouped(x: Tensor) -> Tensor:                  # (B, N, H, dh) -> (R, H, C, N, dh)
        return groups.pack(x).permute(0, 3, 1, 2, 4)

    qg, kg, vg = grouped(q), grouped(k), grouped(v)
    C = qg.shape[2]
    # S part: scale, padding bias and the GEMM in one baddbmm over (R*H) batches
    bias = torch.zeros(R, 1, T, dtype=q.dtype, device=q.device).masked_fill(~s_mask[:, None, :], float("-inf"))
    bias = bias.repeat_interleave(H, 0)                                        # (R*H, 1, T)
    s_s = torch.baddbmm(bias, qg.reshape(R * H, C * N, dh), ks.permute(0, 2, 3, 1).reshape(R * H, dh, T),
                        alpha=scale).float()                                  # (R*H, C*N, T)
    # NS part: causal among the candidate's own rows
    tri = torch.zeros(N, N, device=q.device).masked_fill(
        ~torch.ones(N, N, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    s_n = (torch.matmul(qg, kg.transpose(-1, -2)).float() * scale + tri).reshape(R * H, C * N, N)
    m = torch.maximum(s_s.amax(-1, keepdim=True), s_n.amax(-1, keepdim=True))
    p_s, p_n = torch.exp(s_s - m), torch.exp(s_n - m)
    denom = p_s.sum(-1, keepdim=True) + p_n.sum(-1, keepdim=True)
    out = torch.bmm(p_s.to(vs.dtype), vs.permute(0, 2, 1, 3).reshape(R * H, T, dh)).float()
    out = out + torch.matmul(p_n.reshape(R, H, C, N, N).to(vg.dtype), vg).reshape(R * H, C * N, dh).float()
    out = (out / denom).to(v.dtype).reshape(R, H, C, N, dh).permute(0, 2, 3, 1, 4)   # (R, C, N, H, dh)
    return groups.unpack(out).reshape(B, N, H * dh)


# --------------------------------------------------------------------------------------------
# Stage I / stage II
# --------------------------------------------------------------------------------------------


@dataclass
class SideCache:
    """What stage I leaves for stage II, for R requests.

    keys[n], values[n]: (R, T_n, H, dh) S keys/values entering layer n (T_1 = L_S, T_n = keep of n-1).
    masks[n]: (R, T_n) True = real event. s_final/s_final_mask: S rows that survive the last layer
    (empty under pyramid reading A).
    """

    keys: list[Tensor]
    values: list[Tensor]
    masks: list[Tensor]
    s_final: Tensor
    s_final_mask: Tensor

    @property
    def n_requests(self) -> int:
        return self.s_final.shape[0]


def stage_one(parts: OneTransParts, seq: dict[str, Tensor]) -> SideCache:
    """Run the S-side of every layer once per request (R rows of seq_*)."""
    x, mask = parts.s_tokens(seq)
    backend = getattr(parts, "s_backend", "sdpa")
    keys, values, masks = [], [], []
    for layer in parts.layers:
        n_query = min(layer.keep_s, x.shape[1])

        def run(x: Tensor, mask: Tensor, layer=layer, n_query=n_query):
            q, k, v = layer.s_qkv(x, n_query)
            attn = _s_attention(q, k, v, mask, backend)
            return layer.s_finish(x[:, x.shape[1] - n_query:], attn), k, v

        if getattr(parts, "recompute", False) and torch.is_grad_enabled():
            x_next, k, v = checkpoint(run, x, mask, use_reentrant=False)
        else:
            x_next, k, v = run(x, mask)
        keys.append(k)
        values.append(v)
        masks.append(mask)
        x, mask = x_next, mask[:, mask.shape[1] - n_query:]
    return SideCache(keys=keys, values=values, masks=masks, s_final=x, s_final_mask=mask)


def stage_two(parts: OneTransParts, cache: SideCache, imp: dict[str, Tensor],
              seq: dict[str, Tensor]) -> dict[str, Tensor]:
    """Score B impressions (req_index rows of the cache) from their NS-tokens and the S cache."""
    req_index = imp["req_index"]
    groups = _Groups.of(req_index, cache.n_requests)
    y = parts.ns_tokens(imp, seq)
    for n, layer in enumerate(parts.layers):
        def run(y: Tensor, ks: Tensor, vs: Tensor, layer=layer, n=n) -> Tensor:
            q, k, v = layer.ns_qkv(y)
            return layer.ns_finish(y, _ns_attention(q, k, v, ks, vs, cache.masks[n], groups))

        if getattr(parts, "recompute", False) and torch.is_grad_enabled():
            y = checkpoint(run, y, cache.keys[n], cache.values[n], use_reentrant=False)
        else:
            y = run(y, cache.keys[n], cache.values[n])
    if cache.s_final.shape[1]:
        return parts.heads(y, cache.s_final[req_index], cache.s_final_mask[req_index])
    return parts.heads(y, None, None)


def _split(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    seq = {k: batch[k] for k in SEQ_KEYS}
    imp = {k: v for k, v in batch.items() if k not in SEQ_KEYS}
    return seq, imp


def request_level_forward(model: torch.nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """model(batch) computed with the S-side once per request: same logits, loss and gradients.

    Autograd flows from every impression through req_index into its request's stage-I rows, so
    S-side gradients are summed over the request's candidates exactly as in the plain forward.
    """
    parts = onetrans_parts(model)
    seq, imp = _split(batch)
    return stage_two(parts, stage_one(parts, seq), imp, seq)


def onetrans_parts(model: torch.nn.Module) -> OneTransParts:
    """The OneTransParts view of a model: itself if it already speaks the protocol (the test toy),
    else the adapter over model/onetrans.py's modules."""
    if all(hasattr(model, a) for a in ("s_tokens", "ns_tokens", "heads", "layers")):
        return model  # type: ignore[return-value]
    return _OneTransAdapter(model)


# --------------------------------------------------------------------------------------------
# Serving API
# --------------------------------------------------------------------------------------------


class OneTransScorer:
    """score(history, candidates) -> probabilities, the S-side computed once per request.

    history: the request's seq_* tensors, shape (1, L, ...) (one request, left-padded as in a batch)
    candidates: the per-impression tensors (cand_item, cand_side, ns_cat, ns_num), C rows.
    cache=False runs the plain model(batch) instead (every candidate recomputes the S-side): the
    reference, and the "cache off" row of benchmarks/serving.py. Candidates go through in chunks of
    at most max_batch to bound memory; the cache is shared by every chunk.
    """

    def __init__(self, model: torch.nn.Module, *, cache: bool = True, max_batch: int = 4096) -> None:
        self.model, self.cache, self.max_batch = model, cache, max_batch
        self.parts = onetrans_parts(model) if cache else None

    @torch.no_grad()
    def score(self, history: dict[str, Tensor], candidates: dict[str, Tensor]) -> dict[str, Tensor]:
        n_cand = candidates["cand_item"].shape[0]
        seq = {k: history[k] for k in SEQ_KEYS}
        if seq["seq_item"].shape[0] != 1:
            raise ValueError(f"OneTransScorer.score: history holds {seq['seq_item'].shape[0]} requests; "
                             "pass one request (seq_* tensors of shape (1, L, ...)).")
        side = stage_one(self.parts, seq) if self.cache else None
        outs = []
        for lo in range(0, n_cand, self.max_batch):
            imp = {k: candidates[k][lo:lo + self.max_batch] for k in IMPRESSION_KEYS if k != "req_index"}
            imp["req_index"] = torch.zeros(imp["cand_item"].shape[0], dtype=torch.long, device=imp["cand_item"].device)
            logits = stage_two(self.parts, side, imp, seq) if self.cache else self.model({**seq, **imp})
            outs.append(logits)
        return {t: torch.sigmoid(torch.cat([o[t] for o in outs])) for t in outs[0]}


# --------------------------------------------------------------------------------------------
# Cross-request incremental cache (docs/kv-cache.md §2)
# --------------------------------------------------------------------------------------------


@dataclass
class AppendStats:
    """What the last append reused: r and the rows computed per layer (for tests and benchmarks)."""

    exact_layers: int                 # r: states of old events exact up to and including layer r
    query_rows: list[int]             # S query rows computed per layer
    kv_rows: list[int]                # S key/value rows computed per layer


class IncrementalCache:
    """One user's S-side cache, updated by appending events; exact under the rule of the doc.

    Keeps, for the user's real events only (no padding): the token states h_m of the events each
    layer keeps and the keys/values of the events entering each layer. `append` computes only what
    the causal mask, the pyramid and the frame length (maximum history) make non-reusable.
    Requires time-invariant S tokens (no time-gap embedding; timestamp-aware stream): the caller
    states it with `time_invariant=True`, since the model's token embedding cannot be inspected.
    """

    def __init__(self, model: torch.nn.Module, *, frame: int | None = None,
                 time_invariant: bool | None = None) -> None:
        self.parts = onetrans_parts(model)
        if time_invariant is None:
            time_invariant = bool(getattr(self.parts, "time_invariant", False))
        if not time_invariant:
            raise ValueError("IncrementalCache: S tokens that depend on the request time (time-gap embedding) "
                             "or an intent-ordered stream change old events' tokens; rebuild the cache with "
                             "stage_one instead (docs/kv-cache.md §2, assumption T).")
        self.frame = frame if frame is not None else model.spec.seq_len
        keep, prev = [self.frame], self.frame
        for layer in self.parts.layers:
            prev = min(layer.keep_s, prev)
            keep.append(prev)
        self.keep = keep                                   # s_0 = frame, s_m = kept after layer m
        self.n = 0
        self.states: list[Tensor] | None = None            # h_m rows for events [w_m(n), n)
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.last: AppendStats | None = None

    def window(self, m: int, n: int) -> int:
        """First event whose state exists after layer m when the user has n events."""
        return max(0, n - self.keep[m])

    @torch.no_grad()
    def append(self, new_events: dict[str, Tensor]) -> AppendStats:
        """Add ΔL events (seq_* tensors of shape (1, ΔL, ...), all real, oldest first)."""
        if not bool(new_events["seq_mask"].all()):
            raise ValueError("IncrementalCache.append: new_events must hold real events only (seq_mask all True)")
        x_new, _ = self.parts.s_tokens({k: new_events[k] for k in SEQ_KEYS})
        n0, n1 = self.n, self.n + x_new.shape[1]
        n_layers = len(self.parts.layers)
        same = [self.window(j, n0) == self.window(j, n1) for j in range(n_layers + 1)]
        exact = [all(same[:j]) for j in range(n_layers + 1)]  # h_j of old events exact
        old = self.states
        prev = x_new if old is None else torch.cat([old[0][:, self.window(0, n1) - self.window(0, n0):], x_new], 1)
        prev = prev[:, prev.shape[1] - (n1 - self.window(0, n1)):]
        states, keys, values, q_rows, kv_rows = [prev], [], [], [], []
        for m, layer in enumerate(self.parts.layers, start=1):
            lo_in, lo_out = self.window(m - 1, n1), self.window(m, n1)
            n_out = n1 - lo_out
            n_new_in = n1 - max(n0, lo_in)                          # rows of prev that are new events
            n_query = n_out if not exact[m] or old is None else n1 - max(n0, lo_out)
            if exact[m - 1] and old is not None:
                c = n_new_in
                q, k, v = layer.s_qkv(prev, n_query, c)
                # cached rows hold events [w_{m-1}(n0), n0); reuse events [lo_in, n1 - c)
                a, b = lo_in - self.window(m - 1, n0), n1 - c - self.window(m - 1, n0)
                k = torch.cat([self.keys[m - 1][:, a:b], k], 1)
                v = torch.cat([self.values[m - 1][:, a:b], v], 1)
            else:
                c = prev.shape[1]
                q, k, v = layer.s_qkv(prev, n_query)
            attn = _s_attention(q, k, v, torch.ones(k.shape[:2], dtype=torch.bool, device=k.device))
            fresh = layer.s_finish(prev[:, prev.shape[1] - n_query:], attn)
            if n_query < n_out:                                      # old states of this layer are exact
                kept_old = old[m][:, old[m].shape[1] - (n_out - n_query):]
                fresh = torch.cat([kept_old, fresh], 1)
            states.append(fresh)
            keys.append(k)
            values.append(v)
            q_rows.append(n_query)
            kv_rows.append(c)
            prev = fresh
        self.states, self.keys, self.values, self.n = states, keys, values, n1
        self.last = AppendStats(exact_layers=max(j for j in range(n_layers + 1) if exact[j]),
                                query_rows=q_rows, kv_rows=kv_rows)
        return self.last

    def side_cache(self) -> SideCache:
        """The cache as stage II reads it (one request, no padding)."""
        if self.states is None:
            raise ValueError("IncrementalCache: no events appended yet")
        masks = [torch.ones(k.shape[:2], dtype=torch.bool, device=k.device) for k in self.keys]
        final = self.states[-1]
        return SideCache(keys=self.keys, values=self.values, masks=masks, s_final=final,
                         s_final_mask=torch.ones(final.shape[:2], dtype=torch.bool, device=final.device))

    @torch.no_grad()
    def score(self, candidates: dict[str, Tensor]) -> dict[str, Tensor]:
        imp = {k: candidates[k] for k in IMPRESSION_KEYS if k != "req_index"}
        imp["req_index"] = torch.zeros(imp["cand_item"].shape[0], dtype=torch.long, device=imp["cand_item"].device)
        logits = stage_two(self.parts, self.side_cache(), imp, {})
        return {t: torch.sigmoid(v) for t, v in logits.items()}


# --------------------------------------------------------------------------------------------
# The OneTransParts view of model/onetrans.py (reads its modules; changes nothing)
# --------------------------------------------------------------------------------------------


class _BlockAdapter:
    """One OneTransBlock seen through LayerParts (its norm1/kv/q/o/ffn modules, its keep_s)."""

    def __init__(self, block: torch.nn.Module) -> None:
        self.block = block
        self.keep_s = block.keep_s
        self.n_heads = block.cfg.n_heads

    def _h(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, x.shape[-1] // self.n_heads))

    def s_qkv(self, x: Tensor, n_query: int, n_kv: int | None = None):
        b = self.block
        h = b.norm1(x)
        hk = h if n_kv is None else h[:, h.shape[1] - n_kv:]
        k, v = b.kv.forward_s(hk).chunk(2, -1)
        q = b.q.forward_s(h[:, h.shape[1] - n_query:]) if n_query else h[:, :0]
        return self._h(q), self._h(k), self._h(v)

    def ns_qkv(self, x: Tensor):
        q, k, v = self.block.ns_qkv(x)
        return self._h(q), self._h(k), self._h(v)

    def s_finish(self, x_kept: Tensor, attn: Tensor) -> Tensor:
        return self.block.s_out(x_kept, attn) if x_kept.shape[1] else x_kept

    def ns_finish(self, x: Tensor, attn: Tensor) -> Tensor:
        return self.block.ns_out(x, attn)


class _OneTransAdapter:
    """model/onetrans.py's OneTrans as OneTransParts. Refuses the configurations the cache cannot
    serve exactly (full attention: S-rows would read NS-rows)."""

    def __init__(self, model: torch.nn.Module) -> None:
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "s_tok"):
            raise TypeError(f"KV caching needs a OneTrans model (model/onetrans.py); got {type(model).__name__}")
        if not cfg.causal:
            raise ValueError("onetrans Config.causal=False (full attention): S-tokens read NS-tokens, so the "
                             "S-side cannot be cached; KV caching needs the causal mask (spec §1.2)")
        self.model, self.cfg = model, cfg
        self.layers = [_BlockAdapter(b) for b in model.blocks]
        # S tokens depend on the request time with the gap embedding, and an intent-ordered stream
        # inserts new events mid-list: then old events' tokens change (docs/kv-cache.md §2).
        self.time_invariant = (not cfg.gap_embedding) and cfg.seq_fusion == "timestamp"
        # execution switches follow the model's: reference attention stays reference, recompute
        # checkpoints every stage-I / stage-II layer (flash has no cache-shaped call: SDPA instead)
        self.s_backend = "reference" if model.attention == "reference" else "sdpa"
        self.recompute = model.recompute

    def s_tokens(self, seq: dict[str, Tensor]):
        return self.model.s_tok(seq)

    def ns_tokens(self, imp: dict[str, Tensor], seq: dict[str, Tensor]) -> Tensor:
        return self.model.ns_tok(imp)

    def heads(self, ns_final: Tensor, s_final: Tensor | None, s_mask: Tensor | None) -> dict[str, Tensor]:
        m = self.model
        parts = [ns_final]
        n_s_final = m.n_final - m.cfg.n_ns_tokens          # S rows the heads read (pyramid reading B)
        if n_s_final:
            # the plain forward zeroes padded S rows and always hands the heads n_s_final of them:
            # zero our padded rows and left-pad an unpadded (serving) cache back to that count.
            s = s_final * s_mask.unsqueeze(-1).to(s_final.dtype)
            s = torch.nn.functional.pad(s, (0, 0, n_s_final - s.shape[1], 0))
            parts = [s, ns_final]
        h = m.final_norm(torch.cat(parts, 1)).flatten(1)
        return {t: head(h).squeeze(-1).float() for t, head in m.heads.items()}
