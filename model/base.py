"""The one call every model answers (OneTrans and every baseline).

    logits = model(batch)            # {"ctr": (B,), "cvr": (B,)} raw logits, one per impression
    model.param_counts()             # {"dense": ..., "embedding": ..., "total": ...}
    model.flops_per_example()        # {"forward": ..., "train": ...}  analytic, per impression

"dense" excludes sparse embedding tables: it is the paper's "Params". FLOPs count 2 per
multiply-accumulate, per impression without request-level sharing (the paper's convention);
"train" = forward + backward (3x forward for matmul-dominated models unless stated otherwise).
The conventions are written down in docs/conventions.md.
"""

from __future__ import annotations

import torch
from torch import nn

from .features import FeatureSpec


class RankingModel(nn.Module):
    """Base class: subclasses implement forward() and flops_per_example()."""

    spec: FeatureSpec

    def forward(
        self, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters of sparse embedding tables (nn.Embedding / nn.EmbeddingBag weights)."""
        out: list[nn.Parameter] = []
        for m in self.modules():
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
                out.append(m.weight)
        return out

    def param_counts(self) -> dict[str, int]:
        emb_ids = {id(p) for p in self.embedding_parameters()}
        total = sum(p.numel() for p in self.parameters())
        emb = sum(p.numel() for p in self.parameters() if id(p) in emb_ids)
        return {"dense": total - emb, "embedding": emb, "total": total}

    def flops_per_example(self) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def aux_loss(self) -> torch.Tensor | None:
        """An extra training loss of the last forward (e.g. a Sparse-MoE routing penalty), already
        weighted; None when the model has none. The training system adds it to the task loss."""
        return None
