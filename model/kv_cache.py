"""KV-cached OneTrans: two-stage scoring, request-level training, cross-request incremental cache.

OneTrans's S-tokens never attend to NS-tokens (causal mask, S first), so every S-row of every
layer depends on the behaviour sequence only. Stage I runs the S-side once per request (with the
pyramid) and keeps, for every layer, the keys/values of the S-rows entering that layer; stage II
runs only the candidates' NS-rows, attending to that cache and causally to earlier NS-rows.
The derivation, the cross-request reuse rule and the tolerances are in docs/kv-cache.md.

The two stages run a model through `OneTransParts` (the per-token-type steps they need). For
model/onetrans.py these are the model's own methods: each OneTransBlock is a `LayerParts` (the
same s_qkv / ns_qkv / s_finish / ns_finish its forward is built from), the heads are the model's
final_tokens / head_logits, and attention is model/attention.py's `attend` (the one mask and
attention definition). Nothing of the block is re-implemented here, so a change to the block
reaches the cache too. The plain `model(batch)` stays the reference every path here is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .attention import Groups, SharedKeys, attend
from .features import IMPRESSION_KEYS, SEQ_KEYS

# --------------------------------------------------------------------------------------------
# What the two stages need from a OneTrans model
# --------------------------------------------------------------------------------------------


class LayerParts(Protocol):
    """One OneTrans block split by token type (model/onetrans.py's OneTransBlock is one).
    Tensors are (rows, T, d) unless stated."""

    n_heads: int
    keep_s: int  # S-rows this layer keeps as queries (frame positions, padding included)

    def s_qkv(
        self, x: Tensor, n_query: int, n_kv: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-norm + shared S projections: q for the last n_query rows, k/v for the last n_kv rows
        (all rows when None). Each (R, rows, H, dh)."""

    def ns_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-norm + token-specific NS projections of (B, L_NS, d): q, k, v each (B, L_NS, H, dh)."""

    def s_finish(self, x_kept: Tensor, attn: Tensor) -> Tensor:
        """Residual + shared out-projection + pre-norm shared FFN for kept S rows. attn: (R, q, H*dh)."""

    def ns_finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Residual + token-specific out-projection + pre-norm token-specific FFN for NS rows."""

    def key_bias(self, valid_s: Tensor) -> Tensor | None:
        """(rows, H, T) logit the NS queries add to each S key (OneTrans's recency_bias, by the key's
        rank in valid_s (rows, T)), or None for a layer without one."""


class OneTransParts(Protocol):
    """The model seen as: S tokenizer, NS tokenizer, blocks split by token type, heads."""

    layers: Sequence[LayerParts]

    def s_tokens(self, seq: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(R, L_S, d) S-tokens and (R, L_S) bool mask (True = real token) from the seq_* tensors."""

    def ns_tokens(self, imp: dict[str, Tensor], seq: dict[str, Tensor]) -> Tensor:
        """(B, L_NS, d) NS-tokens from the per-impression tensors (req_index points into seq)."""

    def heads(
        self,
        ns_final: Tensor,
        s_final: Tensor | None,
        s_mask: Tensor | None,
        imp: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """Task logits {"ctr", "cvr"} (B,) from the final NS rows (and surviving S rows, if any);
        imp: the impressions' tensors, for a head that reads features directly (a wide logit)."""


# --------------------------------------------------------------------------------------------
# Attention: model/attention.py's, on the (rows, T, H, dh) layout of LayerParts
# --------------------------------------------------------------------------------------------


def _attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_valid: Tensor,
    k_valid: Tensor,
    backend: str,
    shared: SharedKeys | None = None,
) -> Tensor:
    """Causal attention of q (rows, Tq, H, dh) over k, v (rows, Tk, H, dh) -> (rows, Tq, H*dh).

    Padded query rows follow model/attention.py's one rule: a left-padded S query sees no valid key,
    so it attends to every key and its output is zeroed. That rule is invisible to the cache's
    exactness: no real row ever reads a padded S row (it is masked as a key in the next layer and
    zeroed before the heads), so any finite rule would give the same scores; the model's is the one.
    """
    out = attend(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        q_valid,
        k_valid,
        causal=True,
        backend=backend,
        shared=shared,
    )
    return out.transpose(1, 2).flatten(2)


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
            attn = _attend(q, k, v, mask[:, mask.shape[1] - n_query :], mask, backend)
            return layer.s_finish(x[:, x.shape[1] - n_query :], attn), k, v

        if getattr(parts, "recompute", False) and torch.is_grad_enabled():
            x_next, k, v = checkpoint(run, x, mask, use_reentrant=False)
        else:
            x_next, k, v = run(x, mask)
        keys.append(k)
        values.append(v)
        masks.append(mask)
        x, mask = x_next, mask[:, mask.shape[1] - n_query :]
    return SideCache(keys=keys, values=values, masks=masks, s_final=x, s_final_mask=mask)


def stage_two(
    parts: OneTransParts,
    cache: SideCache,
    imp: dict[str, Tensor],
    seq: dict[str, Tensor],
    groups: Groups | None = None,
) -> dict[str, Tensor]:
    """Score B impressions (req_index rows of the cache) from their NS-tokens and the S cache.
    groups: the per-request layout of req_index when the caller knows it (no host sync then)."""
    req_index = imp["req_index"]
    if groups is None:  # one host sync per batch, shared by all layers
        groups = Groups.of(req_index, cache.n_requests)
    y = parts.ns_tokens(imp, seq)
    ns_valid = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
    for n, layer in enumerate(parts.layers):

        def run(y: Tensor, ks: Tensor, vs: Tensor, layer=layer, n=n) -> Tensor:
            # NS queries over [their request's cached S keys ; their own NS keys, causally]. The
            # reference backend reads the shared S keys in place (one GEMM per request); SDPA and
            # flash would copy the cache once per candidate (docs/kv-cache.md §4).
            q, k, v = layer.ns_qkv(y)
            # (recency_bias: by each cached key's rank, computed here from the current mask, so the
            # S cache itself stays independent of later events)
            bias = layer.key_bias(cache.masks[n])
            shared = SharedKeys(
                ks.transpose(1, 2), vs.transpose(1, 2), cache.masks[n], req_index, groups, bias
            )
            return layer.ns_finish(y, _attend(q, k, v, ns_valid, ns_valid, "reference", shared))

        if getattr(parts, "recompute", False) and torch.is_grad_enabled():
            y = checkpoint(run, y, cache.keys[n], cache.values[n], use_reentrant=False)
        else:
            y = run(y, cache.keys[n], cache.values[n])
    if cache.s_final.shape[1]:
        return parts.heads(y, cache.s_final[req_index], cache.s_final_mask[req_index], imp)
    return parts.heads(y, None, None, imp)


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

    def __init__(
        self, model: torch.nn.Module, *, cache: bool = True, max_batch: int = 4096
    ) -> None:
        self.model, self.cache, self.max_batch = model, cache, max_batch
        self.parts = onetrans_parts(model) if cache else None

    @torch.no_grad()
    def score(self, history: dict[str, Tensor], candidates: dict[str, Tensor]) -> dict[str, Tensor]:
        n_cand = candidates["cand_item"].shape[0]
        seq = {k: history[k] for k in SEQ_KEYS}
        if seq["seq_item"].shape[0] != 1:
            raise ValueError(
                f"OneTransScorer.score: history holds {seq['seq_item'].shape[0]} requests; "
                "pass one request (seq_* tensors of shape (1, L, ...))."
            )
        side = stage_one(self.parts, seq) if self.cache else None
        outs = []
        for lo in range(0, n_cand, self.max_batch):
            imp = {
                k: candidates[k][lo : lo + self.max_batch]
                for k in IMPRESSION_KEYS
                if k != "req_index"
            }
            imp["req_index"] = torch.zeros(
                imp["cand_item"].shape[0], dtype=torch.long, device=imp["cand_item"].device
            )
            logits = (
                stage_two(self.parts, side, imp, seq) if self.cache else self.model({**seq, **imp})
            )
            outs.append(logits)
        return {t: torch.sigmoid(torch.cat([o[t] for o in outs])) for t in outs[0]}


def one_request_groups(n_cand: int, device: torch.device | str) -> Groups:
    """Groups.of(zeros(n_cand), 1) built without its host sync: every candidate in request 0."""
    return Groups(
        index=torch.zeros(n_cand, dtype=torch.long, device=device),
        slot=torch.arange(n_cand, device=device),
        n_groups=1,
        width=n_cand,
    )


class GraphedScorer:
    """KV-cached scoring of one request (stage I + stage II, as OneTransScorer(cache=True)) with no
    host synchronisation, replayed as ONE CUDA graph per (history shape, candidate count, autocast
    dtype) on CUDA (issue #25).

    Why: at OneTrans-L, L = 1484, 100 candidates the request is ~50 GFLOP (about 0.1 ms of H200
    tensor-core time) but ~1,000 small kernels launched from Python; eager serving is launch- and
    dispatch-bound (27 ms p50 measured). A graph replays every kernel with one launch.

    score(history, candidates) copies the inputs into the graph's static buffers, replays, and returns
    fresh probability tensors. The first call of a shape warms up on a side stream and captures
    (autocast's weight-cast cache is off inside, as CUDA graphs require). graph=False (or a CPU model)
    runs the same sync-free function eagerly: the CPU parity test's path. All candidates go through
    in one chunk (use OneTransScorer for more candidates than fit).
    """

    def __init__(self, model: torch.nn.Module, *, graph: bool | None = None) -> None:
        self.model, self.parts = model, onetrans_parts(model)
        on_cuda = next(model.parameters()).device.type == "cuda"
        self.graph = on_cuda if graph is None else (graph and on_cuda)
        # per key: (static inputs, static outputs, graph, groups). Every tensor the graph reads must
        # live as long as the graph: the replay reads their device memory, not the Python objects
        self._graphs: dict[tuple, tuple[dict, dict, object, Groups]] = {}

    def _run(self, seq: dict[str, Tensor], imp: dict[str, Tensor], groups: Groups):
        logits = stage_two(self.parts, stage_one(self.parts, seq), imp, seq, groups)
        return {t: torch.sigmoid(v) for t, v in logits.items()}

    @staticmethod
    def _inputs(history: dict[str, Tensor], candidates: dict[str, Tensor]):
        seq = {k: history[k] for k in SEQ_KEYS}
        if seq["seq_item"].shape[0] != 1:
            raise ValueError("GraphedScorer.score: pass one request (seq_* of shape (1, L, ...))")
        imp = {k: candidates[k] for k in IMPRESSION_KEYS if k != "req_index"}
        n = imp["cand_item"].shape[0]
        imp["req_index"] = torch.zeros(n, dtype=torch.long, device=imp["cand_item"].device)
        return seq, imp, n

    @torch.no_grad()
    def score(self, history: dict[str, Tensor], candidates: dict[str, Tensor]) -> dict[str, Tensor]:
        seq, imp, n = self._inputs(history, candidates)
        if not self.graph:
            return self._run(seq, imp, one_request_groups(n, imp["cand_item"].device))
        dev = imp["cand_item"].device
        dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (
            tuple((k, tuple(v.shape), v.dtype) for k, v in sorted({**seq, **imp}.items())),
            dt,
        )
        if key not in self._graphs:
            self._graphs[key] = self._capture(seq, imp, n, dt, dev)
        static_in, static_out, g, _ = self._graphs[key]
        for k, v in {**seq, **imp}.items():
            static_in[k].copy_(v)
        g.replay()
        return {t: v.clone() for t, v in static_out.items()}

    def _capture(self, seq, imp, n, dt, dev):
        static_in = {k: v.clone() for k, v in {**seq, **imp}.items()}
        s_in = {k: static_in[k] for k in seq}
        i_in = {k: static_in[k] for k in imp}
        # allocated outside the capture and read inside it (stage II's per-request layout): it is
        # returned with the graph and kept beside it. Dropped here (as it was), its memory went back
        # to the caching allocator, the next eager work reused it, and a later replay indexed with
        # whatever lay there (GPU run 2: "index out of bounds" in IndexKernel.cu on the 2nd request)
        groups = one_request_groups(n, dev)

        def fn():
            with torch.autocast(
                "cuda", dtype=dt or torch.bfloat16, enabled=dt is not None, cache_enabled=False
            ):
                return self._run(s_in, i_in, groups)

        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(dev).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = fn()
        return static_in, static_out, g, groups


# --------------------------------------------------------------------------------------------
# Cross-request incremental cache (docs/kv-cache.md §2)
# --------------------------------------------------------------------------------------------


@dataclass
class AppendStats:
    """What the last append reused: r and the rows computed per layer (for tests and benchmarks)."""

    exact_layers: int  # r: states of old events exact up to and including layer r
    query_rows: list[int]  # S query rows computed per layer
    kv_rows: list[int]  # S key/value rows computed per layer


class IncrementalCache:
    """One user's S-side cache, updated by appending events; exact under the rule of the doc.

    Keeps, for the user's real events only (no padding): the token states h_m of the events each
    layer keeps and the keys/values of the events entering each layer. `append` computes only what
    the causal mask, the pyramid and the frame length (maximum history) make non-reusable.
    Requires time-invariant S tokens (no time-gap embedding; timestamp-aware stream): the caller
    states it with `time_invariant=True`, since the model's token embedding cannot be inspected.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        frame: int | None = None,
        time_invariant: bool | None = None,
    ) -> None:
        self.parts = onetrans_parts(model)
        if time_invariant is None:
            time_invariant = bool(getattr(self.parts, "time_invariant", False))
        if not time_invariant:
            raise ValueError(
                "IncrementalCache: S tokens that depend on the request time (time-gap embedding) "
                "or an intent-ordered stream change old events' tokens; rebuild the cache with "
                "stage_one instead (docs/kv-cache.md §2, assumption T)."
            )
        self.frame = frame if frame is not None else model.spec.seq_len
        self.backend = getattr(self.parts, "s_backend", "sdpa")
        keep, prev = [self.frame], self.frame
        for layer in self.parts.layers:
            prev = min(layer.keep_s, prev)
            keep.append(prev)
        self.keep = keep  # s_0 = frame, s_m = kept after layer m
        self.n = 0
        self.states: list[Tensor] | None = None  # h_m rows for events [w_m(n), n)
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
            raise ValueError(
                "IncrementalCache.append: new_events must hold real events only (seq_mask all True)"
            )
        x_new, _ = self.parts.s_tokens({k: new_events[k] for k in SEQ_KEYS})
        n0, n1 = self.n, self.n + x_new.shape[1]
        n_layers = len(self.parts.layers)
        same = [self.window(j, n0) == self.window(j, n1) for j in range(n_layers + 1)]
        exact = [all(same[:j]) for j in range(n_layers + 1)]  # h_j of old events exact
        old = self.states
        prev = (
            x_new
            if old is None
            else torch.cat([old[0][:, self.window(0, n1) - self.window(0, n0) :], x_new], 1)
        )
        prev = prev[:, prev.shape[1] - (n1 - self.window(0, n1)) :]
        states, keys, values, q_rows, kv_rows = [prev], [], [], [], []
        for m, layer in enumerate(self.parts.layers, start=1):
            lo_in, lo_out = self.window(m - 1, n1), self.window(m, n1)
            n_out = n1 - lo_out
            n_new_in = n1 - max(n0, lo_in)  # rows of prev that are new events
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
            real = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)  # no padding here
            attn = _attend(q, k, v, real[:, real.shape[1] - n_query :], real, self.backend)
            fresh = layer.s_finish(prev[:, prev.shape[1] - n_query :], attn)
            if n_query < n_out:  # old states of this layer are exact
                kept_old = old[m][:, old[m].shape[1] - (n_out - n_query) :]
                fresh = torch.cat([kept_old, fresh], 1)
            states.append(fresh)
            keys.append(k)
            values.append(v)
            q_rows.append(n_query)
            kv_rows.append(c)
            prev = fresh
        self.states, self.keys, self.values, self.n = states, keys, values, n1
        self.last = AppendStats(
            exact_layers=max(j for j in range(n_layers + 1) if exact[j]),
            query_rows=q_rows,
            kv_rows=kv_rows,
        )
        return self.last

    def side_cache(self) -> SideCache:
        """The cache as stage II reads it (one request, no padding)."""
        if self.states is None:
            raise ValueError("IncrementalCache: no events appended yet")
        masks = [torch.ones(k.shape[:2], dtype=torch.bool, device=k.device) for k in self.keys]
        final = self.states[-1]
        return SideCache(
            keys=self.keys,
            values=self.values,
            masks=masks,
            s_final=final,
            s_final_mask=torch.ones(final.shape[:2], dtype=torch.bool, device=final.device),
        )

    @torch.no_grad()
    def score(self, candidates: dict[str, Tensor]) -> dict[str, Tensor]:
        imp = {k: candidates[k] for k in IMPRESSION_KEYS if k != "req_index"}
        imp["req_index"] = torch.zeros(
            imp["cand_item"].shape[0], dtype=torch.long, device=imp["cand_item"].device
        )
        logits = stage_two(self.parts, self.side_cache(), imp, {})
        return {t: torch.sigmoid(v) for t, v in logits.items()}


# --------------------------------------------------------------------------------------------
# The OneTransParts view of model/onetrans.py (calls its own methods; changes nothing)
# --------------------------------------------------------------------------------------------


class _OneTransAdapter:
    """model/onetrans.py's OneTrans as OneTransParts: its blocks are the layers, its tokenizers and
    head methods the rest. Refuses the configurations the cache cannot serve exactly (full
    attention: S-rows would read NS-rows)."""

    def __init__(self, model: torch.nn.Module) -> None:
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "s_tok"):
            raise TypeError(
                f"KV caching needs a OneTrans model (model/onetrans.py); got {type(model).__name__}"
            )
        if not cfg.causal:
            raise ValueError(
                "onetrans Config.causal=False (full attention): S-tokens read NS-tokens, so the "
                "S-side cannot be cached; KV caching needs the causal mask (spec §1.2)"
            )
        self.model, self.cfg = model, cfg
        self.layers = list(model.blocks)
        # S tokens depend on the request time with the gap embedding, and an intent-ordered stream
        # inserts new events mid-list: then old events' tokens change (docs/kv-cache.md §2).
        self.time_invariant = (not cfg.gap_embedding) and cfg.seq_fusion == "timestamp"
        # execution switches follow the model's: reference attention stays reference, recompute
        # checkpoints every stage-I / stage-II layer (stage I uses SDPA where the model may use flash)
        self.s_backend = (
            model.attention if model.attention in ("reference", "sdpa_causal") else "sdpa"
        )
        self.recompute = model.recompute

    def s_tokens(self, seq: dict[str, Tensor]):
        return self.model.s_tok(seq)

    def ns_tokens(self, imp: dict[str, Tensor], seq: dict[str, Tensor]) -> Tensor:
        return self.model.ns_tok(imp)

    def heads(
        self,
        ns_final: Tensor,
        s_final: Tensor | None,
        s_mask: Tensor | None,
        imp: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        if s_final is None:  # no S row left (pyramid reading A)
            h = self.model.final_tokens(ns_final[:, :0], ns_final)
        else:
            h = self.model.final_tokens(s_final, ns_final, s_mask)
        return self.model.head_logits(h, imp["ns_num"])  # ns_num: the wide logit, when on
