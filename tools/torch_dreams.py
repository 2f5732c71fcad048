"""DreaMS in PyTorch, as the official pluskal-lab/DreaMS code computes it, for `tools/bench_train.py`.

Not the official code and not part of the package: a port written for the benchmark, with the official
state-dict names (`fourier_enc.b`, `ff_fourier.ff.<i>`, `transformer_encoder.atts.<i>.weights`, ...), so
`vqax.models.dreams_convert.convert_state_dict` carries one set of weights into vqax, and with the
official model's computation, the costs included:
- the Graphormer m/z bias is the materialized [B, N, N, d_fourier] tensor of Fourier-feature differences,
  built once per forward and summed in every layer (vqax's default adds the equal per-key term instead);
- attention is einsum -> scale -> bias -> masked_fill(padding query rows, -1e9) -> softmax -> dropout -> bmm
  with packed [Wq; Wk; Wv; Wo] weights; pre-LN layers; ReLU FFN of width 4 d;
- each spectrum of a retention-order pair runs its own forward (the official `spec_ssl_step` twice), the
  m/z head runs on the masked rows only (`pred_embs[mask]`), focal loss as `FocalLoss` computes it;
- torch.optim.Adam with the frozen Fourier table excluded (requires_grad=False), as `configure_optimizers`.
`tests/test_torch_dreams.py` checks the port against the official fixture (../shared/fixtures). Needs torch
(`pip install 'vqax[torch]'`); nothing in vqax imports this file.
"""
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from vqax.models.dreams import DreaMS as FlaxDreaMS
from vqax.models.dreams import lin_float_int_frequencies


class FourierFeatures(nn.Module):
  """m/z [..., 1] -> [cos(2 pi m/z b), sin(2 pi m/z b)]; always float32 (arguments reach 1e7 rad)."""

  def __init__(self, x_min: float, x_max: float, trainable: bool):
    super().__init__()
    self.b = nn.Parameter(torch.from_numpy(lin_float_int_frequencies(x_min, x_max))[None], requires_grad=trainable)
    self.register_parameter("Fourier frequencies", self.b)  # the official module registers it twice

  def forward(self, mz):
    with torch.autocast(mz.device.type, enabled=False):
      arg = 2 * torch.pi * mz.float() @ self.b
      return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


class MLP(nn.Module):
  """The official `FeedForward`: (Linear, Dropout, ReLU) per hidden layer, then Linear [+ ReLU]."""

  def __init__(self, in_dim: int, out_dim: int, hidden: int, depth: int, act_last: bool = True, bias: bool = True,
               dropout: float = 0.0):
    super().__init__()
    layers = []
    for layer in range(depth):
      last = layer == depth - 1
      layers.append(nn.Linear(in_dim if layer == 0 else hidden, out_dim if last else hidden, bias=bias))
      if not last:
        layers.append(nn.Dropout(dropout))
      if not last or act_last:
        layers.append(nn.ReLU())
    self.ff = nn.Sequential(*layers)

  def forward(self, x):
    return self.ff(x)


class Attention(nn.Module):
  """Multi-head self-attention with packed weights [Wq; Wk; Wv; Wo] and the summed m/z-difference bias."""

  def __init__(self, d_model: int, n_heads: int, bias: bool, dropout: float):
    super().__init__()
    self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
    std = math.sqrt(2 / (5 * d_model))
    self.weights = nn.Parameter(torch.randn(4 * d_model, d_model) * std)
    self.biases = nn.Parameter(torch.zeros(4 * d_model)) if bias else None

  def _project(self, x, start: int, end: int):
    return F.linear(x, self.weights[start:end], None if self.biases is None else self.biases[start:end])

  def forward(self, x, padding, dists):
    b, n, d = x.shape
    heads = lambda t: t.reshape(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)
    q, k, v = (heads(t) for t in self._project(x, 0, 3 * d).chunk(3, dim=-1))
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) * (d // self.n_heads) ** -0.5
    if dists is not None:
      logits = logits + dists.sum(dim=-1).unsqueeze(1)  # [B, N, N, d_fourier] -> [B, 1, N, N]
    logits = logits.masked_fill(padding[:, None, :, None], -1e9)  # official: padding QUERY rows
    weights = F.dropout(F.softmax(logits, dim=-1), p=self.dropout, training=self.training)
    out = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, d)
    return self._project(out, 3 * d, 4 * d)


class TransformerFFN(nn.Module):
  def __init__(self, d_model: int, bias: bool, dropout: float):
    super().__init__()
    std = math.sqrt(2 / (5 * d_model))  # sqrt(2 / (ff_dim + d)) with ff_dim = 4 d
    self.in_proj, self.out_proj = nn.Linear(d_model, 4 * d_model, bias=bias), nn.Linear(4 * d_model, d_model, bias=bias)
    for layer in (self.in_proj, self.out_proj):
      nn.init.normal_(layer.weight, 0.0, std)
      if bias:
        nn.init.zeros_(layer.bias)
    self.dropout = dropout

  def forward(self, x):
    return self.out_proj(F.dropout(F.relu(self.in_proj(x)), p=self.dropout, training=self.training))


class TransformerEncoder(nn.Module):
  """Pre-LN (or post-LN) layers; `scales` holds 2 LayerNorms per layer (+ the final one when pre-LN)."""

  def __init__(self, m: FlaxDreaMS):
    super().__init__()
    d = m.d_model
    self.pre_norm, self.residual_dropout = m.pre_norm, m.residual_dropout
    self.atts = nn.ModuleList([Attention(d, m.n_heads, m.transformer_bias, m.att_dropout) for _ in range(m.n_layers)])
    self.ffs = nn.ModuleList([TransformerFFN(d, m.transformer_bias, m.ff_dropout) for _ in range(m.n_layers)])
    self.scales = nn.ModuleList([nn.LayerNorm(d) for _ in range(2 * m.n_layers + int(m.pre_norm))])

  def forward(self, x, padding, dists):
    drop = lambda t: F.dropout(t, p=self.residual_dropout, training=self.training)
    x = drop(x)
    for i, (att, ff) in enumerate(zip(self.atts, self.ffs)):
      att_norm, ff_norm = self.scales[2 * i], self.scales[2 * i + 1]
      h = att(att_norm(x) if self.pre_norm else x, padding, dists)
      x = x + drop(h)
      x = x if self.pre_norm else att_norm(x)
      h = ff(ff_norm(x) if self.pre_norm else x)
      x = x + drop(h)
      x = x if self.pre_norm else ff_norm(x)
    return self.scales[-1](x) if self.pre_norm else x


class DreaMS(nn.Module):
  """Spectra [B, N, 2] (precursor token first, zero rows padding) -> per-peak outputs [B, N, d_model].

  Sizes come from a vqax `DreaMS` module's fields (one description of the architecture for both).
  """

  def __init__(self, m: FlaxDreaMS):
    super().__init__()
    self.max_mz, self.bin_size, self.graphormer = m.max_mz, m.hot_mz_bin_size, m.graphormer_mz_diffs
    self.fourier_enc = FourierFeatures(m.fourier_x_min, m.max_mz, m.fourier_trainable)
    n_features = self.fourier_enc.b.shape[1] * 2
    self.ff_fourier = MLP(n_features, m.d_fourier, m.ff_fourier_d, m.ff_fourier_depth, bias=m.ffs_bias,
                          dropout=m.dropout)
    self.ff_peak = MLP(2, m.d_peak, m.d_peak, m.ff_peak_depth, bias=m.ffs_bias, dropout=m.dropout)
    self.transformer_encoder = TransformerEncoder(m)
    self.ff_out = (MLP(m.d_model, m.num_mz_bins, m.d_model, m.ff_out_depth, act_last=False, dropout=m.dropout)
                   if m.mz_head else None)
    self.ro_out = nn.Linear(2 * m.d_model, 1, bias=False) if m.ro_head else None

  def forward(self, spec):
    padding = spec[:, :, 0] == 0
    peak_embs = self.ff_peak(spec / torch.tensor([self.max_mz, 1.0], dtype=spec.dtype))
    fourier = self.ff_fourier(self.fourier_enc(spec[..., [0]]))
    dists = fourier.unsqueeze(2) - fourier.unsqueeze(1) if self.graphormer else None
    return self.transformer_encoder(torch.cat([peak_embs, fourier], dim=-1), padding, dists)


def mz_classes(mz, max_mz: float, bin_size: float):
  """The official `to_classes`: clamp(round(m/z / bin), max=C-1), half to even."""
  return torch.clamp(torch.round(mz / bin_size), max=round(max_mz / bin_size) - 1).long()


def focal_loss(logits, targets, gamma: float):
  """The official `FocalLoss` (unreduced): (1 - p_t)^gamma * -log(softmax)_t."""
  p = F.softmax(logits.float(), dim=-1)
  nll = F.nll_loss(p.log(), targets, reduction="none")
  p_t = p.gather(-1, targets[:, None])[:, 0]
  return (1 - p_t) ** gamma * nll


class DreaMSStep:
  """One pre-training step on retention-order pairs, as the official `DreaMS.step` + Adam computes it.

  A batch is (spec_mask [B, 2, N, 2], spec_real [B, 2, N, 2], mask [B, 2, N] bool, ro_label [B]): the
  official data set masks on the host, so the batch arrives masked. `forward` may be a torch.compile'd model.
  """

  def __init__(self, model: DreaMS, config, forward=None, bf16: bool = False):
    self.model, self.forward = model, model if forward is None else forward
    self.bf16 = bf16
    trainable = [p for p in model.parameters() if p.requires_grad]
    self.optimizer = torch.optim.Adam(trainable, lr=float(config.learning_rate),
                                      weight_decay=float(config.weight_decay))
    self.trainable, self.clip = trainable, float(config.grad_clip_norm)
    self.gamma, self.ro_weight = float(config.focal_loss_gamma), float(config.ret_order_loss_w)

  def loss(self, spec_mask, spec_real, mask, ro_label):
    m = self.model
    mask_losses, precursors = [], []
    for side in (0, 1):  # one forward per spectrum of the pair, as spec_ssl_step
      with torch.autocast(spec_mask.device.type, dtype=torch.bfloat16, enabled=self.bf16):
        per_peak = self.forward(spec_mask[:, side])
        logits = m.ff_out(per_peak[mask[:, side]])
      targets = mz_classes(spec_real[:, side][mask[:, side]][:, 0], m.max_mz, m.bin_size)
      losses = focal_loss(logits, targets, self.gamma)
      mask_losses.append(losses.sum() / losses.numel())
      precursors.append(per_peak[:, 0].float())
    mask_loss = (mask_losses[0] + mask_losses[1]) / 2
    if not self.ro_weight:
      return mask_loss
    ro_prob = torch.sigmoid(m.ro_out(torch.cat(precursors, dim=-1))).squeeze(-1)
    ro_loss = F.binary_cross_entropy(ro_prob, ro_label)
    return (1 - self.ro_weight) * mask_loss + self.ro_weight * ro_loss

  def eval_loss(self, *batch) -> float:
    """The loss without dropout and without an update: what two frameworks must agree on."""
    self.model.eval()
    try:
      with torch.no_grad():
        return float(self.loss(*batch))
    finally:
      self.model.train()

  def __call__(self, *batch):
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss(*batch)
    loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.trainable, self.clip)
    self.optimizer.step()
    return loss.detach()


def state_dict_arrays(model: DreaMS) -> dict[str, np.ndarray]:
  """The model's state dict as float32 numpy arrays (what `convert_state_dict` reads)."""
  return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
