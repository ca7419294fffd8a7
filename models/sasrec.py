"""SASRec-style sequential recommender with a multi-task ZILN lifetime-value head.

One user encoder (causal self-attention over the user's typed events) feeds two heads:
  * next-item scores: dot product with the (tied) item embedding table, full softmax over the catalogue;
  * LTV: zero-inflated lognormal parameters (Wang, Liu & Miao, 2019) from the user vector plus RFM features.
Sequences are left-padded with item 0; padding never reaches a real position through attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


SIGMA_MIN = 0.05  # the ZILN lognormal sigma's lower bound (ziln_sigma)


@dataclass
class ModelConfig:
    n_items: int  # catalogue size + 1 (index 0 is padding)
    n_ltv_features: int
    n_event_types: int  # the features' event types + 1 (code 0 is padding)
    max_len: int = 50
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    dropout: float = 0.2
    text_dim: int = 0  # > 0: item text vectors (buffer `item_text`) are projected and added to item embeddings
    time_gaps: bool = False  # add an embedding of the time since the previous event (time_gap_buckets)
    ltv_user_dim: int = 0  # the shared user vector enters the LTV head through this bottleneck (0: it does not)
    # upper bound of the lognormal sigma, which lies in (0.05, ltv_sigma_max]: with a free sigma,
    # exp(mu + sigma^2 / 2) explodes for customers outside the training window's range
    ltv_sigma_max: float = 2.0
    # mu = log(prior) + the head's output, the prior being models/ltv_prior.py's seasonal BG/NBD + Gamma-Gamma value
    ltv_prior: bool = False
    # predictions keep this share of the head's correction of the prior, in log space (see ltv_estimate)
    ltv_correction_weight: float = 1.0
    # expected values are multiplied by this: the level the LTV backtest found such a head off by H days later
    ltv_level: float = 1.0

    def __post_init__(self):
        if not self.ltv_sigma_max > SIGMA_MIN:
            raise ValueError(f"ltv_sigma_max must be > {SIGMA_MIN} (sigma's lower bound), got {self.ltv_sigma_max!r}")


# codes of the time since the previous event: 0 padding, 1 none (first event of the window), 2 the same second (one
# basket / invoice), then 3 + floor(log2(1 + minutes)) up to 23 (about two years and more)
TIME_GAP_BUCKETS = 24


def time_gap_buckets(ts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, L) epoch seconds and real-position mask -> (B, L) time-gap codes (see TIME_GAP_BUCKETS)."""
    prev_ts = F.pad(ts[:, :-1], (1, 0))
    prev_valid = F.pad(valid[:, :-1], (1, 0), value=False)
    minutes = (ts - prev_ts).clamp(min=0).double() / 60.0
    log_code = 3 + torch.floor(torch.log2(1.0 + minutes)).long().clamp(max=TIME_GAP_BUCKETS - 4)
    codes = torch.where(minutes == 0, 2, log_code)
    return torch.where(valid, torch.where(prev_valid, codes, 1), 0)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). Dropout acts on the attention's and the
    MLP's outputs, not on the attention weights: dropping weights forces PyTorch's unfused attention on CPU, which
    made a MovieLens-1M-shaped training step a quarter slower (docs/benchmarks.md)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L, d) -> (B, L, d); with last_only, (B, 1, d): only the last position's output (keys and values
        still come from every position), which is all that scoring needs from the final block."""
        b, length, d = x.shape
        h = self.ln1(x)
        if last_only:
            q = F.linear(h[:, -1:], self.qkv.weight[:d], self.qkv.bias[:d])
            k, v = F.linear(h, self.qkv.weight[d:], self.qkv.bias[d:]).split(d, dim=2)
            x, mask = x[:, -1:], mask[..., -1:, :]
        else:
            q, k, v = self.qkv(h).split(d, dim=2)
        q, k, v = (t.reshape(b, t.shape[1], self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, x.shape[1], d)))
        return x + self.mlp(self.ln2(x))


class SeqRecModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items, cfg.d_model, padding_idx=0)
        if cfg.text_dim:
            self.text_proj = nn.Linear(cfg.text_dim, cfg.d_model, bias=False)
            self.register_buffer("item_text", torch.zeros(cfg.n_items, cfg.text_dim))
        self.type_emb = nn.Embedding(cfg.n_event_types, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        if cfg.time_gaps:
            self.gap_emb = nn.Embedding(TIME_GAP_BUCKETS, cfg.d_model, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # a narrow view of the user vector: with a few thousand customers, all 64 dimensions overfit the head
        if cfg.ltv_user_dim:
            self.ltv_user = nn.Sequential(nn.Linear(cfg.d_model, cfg.ltv_user_dim), nn.Dropout(cfg.dropout))
        self.ltv_head = ltv_head(cfg.ltv_user_dim + cfg.n_ltv_features, cfg.d_model)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def item_vectors(self) -> torch.Tensor:
        """(n_items, d) item representations: learned embedding, plus projected text when configured."""
        if self.cfg.text_dim:
            return self.item_emb.weight + self.text_proj(self.item_text)
        return self.item_emb.weight

    def encode(self, items: torch.Tensor, types: torch.Tensor, last_only: bool = False,
               item_vecs: torch.Tensor | None = None, ts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded item / event-type codes, L <= max_len -> (B, L, d) hidden states, or with last_only
        (B, 1, d): the last position's only (the user vector), skipping the final block's other positions.
        The columns are the LAST L of the max_len positions: a batch of short histories may drop leading padding.
        `item_vecs`: item_vectors() computed once by a caller that encodes many batches without training.
        `ts`: (B, L) event times in epoch seconds, aligned with `items`; required by a model with time_gaps."""
        b, length = items.shape
        valid = items != 0
        pos = torch.arange(self.cfg.max_len - length, self.cfg.max_len, device=items.device)
        item_vecs = self.item_vectors() if item_vecs is None else item_vecs
        x = F.embedding(items, item_vecs) * math.sqrt(self.cfg.d_model) + self.type_emb(types) + self.pos_emb(pos)
        if self.cfg.time_gaps:
            if ts is None:
                raise ValueError("this model embeds the time between events (time_gaps): pass the events' ts")
            x = x + self.gap_emb(time_gap_buckets(ts, valid))
        x = self.drop(x) * valid.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        # a position attends to earlier real positions and always to itself (so padded rows stay finite)
        mask = (causal & valid[:, None, :]) | torch.eye(length, dtype=torch.bool, device=items.device)
        mask = mask.unsqueeze(1)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and i == len(self.blocks) - 1)
        return self.ln_f(x)

    def item_logits(self, hidden: torch.Tensor, item_vecs: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every catalogue item (tied output embeddings); padding gets -inf."""
        logits = hidden @ (self.item_vectors() if item_vecs is None else item_vecs).T
        logits[..., 0] = float("-inf")
        return logits

    def ltv_params(self, user_vec: torch.Tensor | None, feats: torch.Tensor, prior: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZILN parameters: purchase logit, lognormal mu and sigma (in (0.05, ltv_sigma_max]). With cfg.ltv_prior,
        `prior` (> 0, one per row) is required and mu = log(prior) + the head's output: the head learns a correction
        of the prior."""
        out = self.ltv_head(torch.cat([self.ltv_user(user_vec), feats], dim=-1) if self.cfg.ltv_user_dim else feats)
        mu = out[:, 1]
        if self.cfg.ltv_prior:
            if prior is None:
                raise ValueError("this model's LTV head corrects a prior (ltv_prior): pass the customers' ltv_prior")
            mu = mu + torch.log(prior.to(mu.dtype))
        return out[:, 0], mu, ziln_sigma(out[:, 2], self.cfg.ltv_sigma_max)

    def ltv_estimate(self, user_vec: torch.Tensor | None, feats: torch.Tensor, prior: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(p_active, expected value) per customer. With a prior and ltv_correction_weight w < 1, the expected value
        keeps the share w of the ZILN's correction in log space: prior^(1 - w) * ZILN^w. A correction learned in
        one season (the training window) is applied in another (the horizon), so it is shrunk towards the prior.
        The result is multiplied by ltv_level (models/ltv_backtest.py: the level calibration)."""
        p, ev = ziln_expected_value(*self.ltv_params(user_vec, feats, prior))
        w = self.cfg.ltv_correction_weight
        if self.cfg.ltv_prior and w != 1.0:
            ev = shrink_to_prior(ev, prior, w)
        return p, ev * self.cfg.ltv_level

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training pass for both tasks; returns the two losses.

        Next-item loss: full softmax over the catalogue, or, when the batch carries `neg_items` (shared
        negatives drawn from Q) and `log_q`, sampled softmax with logQ correction. Logits are computed only
        at positions that have a target.
        """
        h = self.encode(batch["items"], batch["types"], ts=batch.get("ts"))
        targets = batch["targets"]
        has_target = targets != 0
        if not has_target.any():
            rec_loss = h.sum() * 0.0  # keeps every parameter in the graph (DDP)
        elif "neg_items" in batch:
            rec_loss = sampled_softmax_loss(h[has_target], targets[has_target], self.item_vectors(),
                                            batch["neg_items"], batch["log_q"])
        else:
            rec_loss = full_softmax_loss(h[has_target], targets[has_target], self.item_vectors())
        # the LTV examples' user vectors, only where the head reads them
        hl = self.encode(batch["ltv_items"], batch["ltv_types"], ts=batch.get("ltv_ts"))[:, -1] if self.cfg.ltv_user_dim else None
        logit, mu, sigma = self.ltv_params(hl, batch["ltv_feats"], batch.get("ltv_prior"))
        ltv_loss = ziln_loss(logit, mu, sigma, batch["ltv_label"], batch["ltv_mask"])
        return {"rec_loss": rec_loss, "ltv_loss": ltv_loss}


def full_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, item_vectors: torch.Tensor,
                      chunk_rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden @ item_vectors.T) over the catalogue (item 0, padding, excluded).

    The same value and gradients as F.cross_entropy(item_logits(hidden), targets), computed in chunks of rows
    that stay in the CPU cache; it never holds the full (positions x items) logits. When gradients are wanted they
    are computed in the forward pass, from each chunk's logits while they are at hand (softmax - one-hot), so the
    logits are computed and exponentiated once, not again in the backward pass (docs/benchmarks.md has the speed-ups).
    `chunk_rows`: default 128 on CPU, 8192 on GPUs (fewer, larger kernels).
    """
    if chunk_rows is None:
        chunk_rows = 128 if hidden.device.type == "cpu" else 8192
    return _ChunkedSoftmaxCE.apply(hidden, item_vectors, targets, chunk_rows)


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, item_vectors, targets, chunk_rows):
        # under autocast (bf16 on GPU) the matmuls run in the autocast dtype; the softmax in float32 at least
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        n, acc = len(targets), torch.promote_types(hidden.dtype, torch.float32)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=acc, device=hidden.device)
        weights = item_vectors.to(dtype)
        if want_grad:
            grad_hidden = torch.empty_like(hidden)
            grad_items = torch.zeros(item_vectors.shape, dtype=acc, device=item_vectors.device)
            rows = torch.arange(min(n, chunk_rows), device=hidden.device)
        with torch.autocast(device_type, enabled=False):
            for s in range(0, n, chunk_rows):
                h, t = hidden[s:s + chunk_rows].to(dtype), targets[s:s + chunk_rows]
                logits = (h @ weights.T).to(acc)
                logits[:, 0] = float("-inf")
                peak = logits.amax(dim=1, keepdim=True)
                picked = logits.gather(1, t[:, None]).squeeze(1)
                exp = logits.sub_(peak).exp_()  # in place: one pass over the chunk's logits
                norm = exp.sum(dim=1)
                total += (peak.squeeze(1) + torch.log(norm) - picked).sum()
                if want_grad:  # d loss / d logits = softmax - one-hot (the 1/n comes in backward)
                    grad = exp.div_(norm[:, None])
                    grad[rows[:len(h)], t] -= 1.0
                    grad = grad.to(dtype)
                    grad_hidden[s:s + chunk_rows] = grad @ weights
                    grad_items += grad.T @ h
        if want_grad:
            ctx.save_for_backward(grad_hidden, grad_items)
        ctx.n, ctx.item_dtype = max(n, 1), item_vectors.dtype
        return total / ctx.n

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_items = ctx.saved_tensors
        scale = grad_out / ctx.n
        return grad_hidden * scale.to(grad_hidden.dtype), (grad_items * scale).to(ctx.item_dtype), None, None


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, item_vectors: torch.Tensor,
                         negatives: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Softmax over [target, shared negatives] with logQ correction (Yi et al., 2019).

    Every candidate's logit is reduced by log Q(item), the log of its sampling probability, which makes
    the sampled loss an unbiased stand-in for the full softmax; negatives equal to the target are masked.
    """
    pos = (hidden * item_vectors[targets]).sum(-1) - log_q[targets]
    neg = hidden @ item_vectors[negatives].T - log_q[negatives]
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=logits.device))


def ziln_loss(logit, mu, sigma, y, mask=None) -> torch.Tensor:
    """Zero-inflated lognormal negative log-likelihood, averaged over (masked) examples.

    classification: BCE(logit, y > 0); regression, for y > 0 only: -log LogNormal(y; mu, sigma).
    """
    if mask is None:
        mask = torch.ones_like(y)
    positive = (y > 0).to(y.dtype)
    bce = F.binary_cross_entropy_with_logits(logit, positive, reduction="none")
    log_y = torch.log(torch.where(y > 0, y, torch.ones_like(y)))
    nll = log_y + torch.log(sigma) + 0.5 * math.log(2 * math.pi) + (log_y - mu) ** 2 / (2 * sigma**2)
    per_example = bce + positive * nll
    return (per_example * mask).sum() / mask.sum().clamp(min=1.0)


def ltv_head(n_inputs: int, width: int) -> nn.Sequential:
    """The LTV head's layers: inputs -> (purchase logit, lognormal mu or its correction, sigma pre-activation)."""
    return nn.Sequential(nn.Linear(n_inputs, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                         nn.Linear(width, 3))


def ziln_sigma(raw: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """The lognormal sigma in (SIGMA_MIN, sigma_max] from the head's third output."""
    return SIGMA_MIN + (sigma_max - SIGMA_MIN) * torch.sigmoid(raw)


def shrink_to_prior(ev: torch.Tensor, prior: torch.Tensor, w: float) -> torch.Tensor:
    """prior^(1 - w) * ev^w: the share w of the ZILN's correction of the prior, kept in log space."""
    log_prior = torch.log(prior.to(ev.dtype))
    return torch.exp(log_prior + w * (torch.log(ev.clamp(min=1e-30)) - log_prior))


def ziln_expected_value(logit, mu, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_active, expected value) with E[y] = p * exp(mu + sigma^2 / 2)."""
    p = torch.sigmoid(logit)
    return p, p * torch.exp(mu + 0.5 * sigma**2)
