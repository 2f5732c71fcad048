"""PyTorch counterparts of the vqax models and train steps, written for `tools/bench_train.py`.

Not part of the package and not the official code: the architectures, losses and optimizer of
`vqax.models.vqvae` + `vqax.tasks.vqvae` and `vqax.models.redimnet` + `vqax.tasks.redimnet_mrl`, written the
way PyTorch code is written (channels-first, eager autograd, torch.optim.AdamW). ReDimNet's modules carry the
official IDRnD/ReDimNet state_dict names, so `vqax.models.redimnet_convert.convert_state_dict` puts one
set of weights into both models and the benchmark checks they compute the same loss before timing them.
Needs torch (`pip install 'vqax[torch]'`); nothing in vqax imports this file.
"""
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from vqax.audio.melbanks import hamming_window
from vqax.audio.mel import mel_filterbank
from vqax.models.redimnet import melbank_kwargs, normalize_config

# ----------------------------------------------------------------------------------------------------------
# VQ-VAE (vqax.models.vqvae)
# ----------------------------------------------------------------------------------------------------------


class VQVAE(nn.Module):
  """1x64x64 patches -> 4x4 stride-2 convs -> 3x3 to latent -> VQ -> 4x4 stride-2 transposed convs -> 3x3."""

  def __init__(self, channels=(32, 64, 96), latent_dim=64, num_embeddings=128):
    super().__init__()
    layers, c_in = [], 1
    for c in channels:
      layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.ReLU()]
      c_in = c
    self.encoder = nn.Sequential(*layers, nn.Conv2d(c_in, latent_dim, 3, 1, 1))
    self.codebook = nn.Parameter(torch.empty(num_embeddings, latent_dim).uniform_(-1 / num_embeddings,
                                                                                  1 / num_embeddings))
    layers, c_in = [], latent_dim
    for c in reversed(channels):
      layers += [nn.ConvTranspose2d(c_in, c, 4, 2, 1), nn.ReLU()]
      c_in = c
    self.decoder = nn.Sequential(*layers, nn.Conv2d(c_in, 1, 3, 1, 1))

  def forward(self, x):
    z = self.encoder(x)
    n, d, h, w = z.shape
    with torch.autocast(x.device.type, enabled=False):  # the quantizer in float32 under autocast, as vqax's
      flat = z.float().permute(0, 2, 3, 1).reshape(-1, d)
      distances = (flat**2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + (self.codebook**2).sum(1)[None]
      codes = distances.argmin(1)
      quantized = self.codebook[codes]
      codebook_loss = ((quantized - flat.detach())**2).mean()
      commitment_loss = ((quantized.detach() - flat)**2).mean()
      straight_through = flat + (quantized - flat).detach()
    recon = self.decoder(straight_through.reshape(n, h, w, d).permute(0, 3, 1, 2))
    return recon.float(), codes, flat.detach(), codebook_loss, commitment_loss


def vqvae_weights_from_flax(model: VQVAE, params) -> None:
  """Copy vqax VQ-VAE params (any down/upsample impl: one parameterisation) into `model`."""
  convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
  names = [f"down{i}" for i in range(len(convs) - 1)] + ["to_latent"]
  with torch.no_grad():
    for conv, name in zip(convs, names):
      layer = params["encoder"][name]
      layer = layer.get("Conv_0", layer)
      conv.weight.copy_(torch.from_numpy(np.array(layer["kernel"]).transpose(3, 2, 0, 1).copy()))
      conv.bias.copy_(torch.from_numpy(np.array(layer["bias"])))
    ups = [m for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    for i, up in enumerate(ups):
      layer = params["decoder"][f"up{i}"]["Upsample2x_0"]
      # A [kh, kw, Cin, Cout] transposed-conv kernel is PyTorch's [Cin, Cout, kh, kw] (no flip).
      up.weight.copy_(torch.from_numpy(np.array(layer["kernel"]).transpose(2, 3, 0, 1).copy()))
      up.bias.copy_(torch.from_numpy(np.array(layer["bias"])))
    out = model.decoder[-1]
    out.weight.copy_(torch.from_numpy(np.array(params["decoder"]["to_output"]["kernel"]).transpose(3, 2, 0, 1).copy()))
    out.bias.copy_(torch.from_numpy(np.array(params["decoder"]["to_output"]["bias"])))
    model.codebook.copy_(torch.from_numpy(np.array(params["quantizer"]["codebook"])))


class VQVAEStep:
  """One "full"-phase step of vqax's VQ-VAE task: loss, AdamW with global-norm clipping, code tracking and
  dead-code revival (`vqax.tasks.vqvae`). `forward` may be a torch.compile'd model."""

  def __init__(self, model: VQVAE, config, forward=None, bf16: bool = False):
    self.model, self.forward = model, model if forward is None else forward
    self.bf16 = bf16  # autocast to bfloat16 (float32 weights), vqax's compute_dtype="bfloat16"
    self.optimizer = torch.optim.AdamW(model.parameters(), lr=float(config.learning_rate),
                                       weight_decay=float(config.weight_decay))
    self.clip = float(config.grad_clip_norm)
    self.beta = float(config.commitment_cost)
    self.decay = float(config.dead_code_decay)
    self.threshold = float(config.dead_code_threshold)
    k = model.codebook.shape[0]
    self.usage = torch.zeros(k)

  def loss(self, patches):
    with torch.autocast(patches.device.type, dtype=torch.bfloat16, enabled=self.bf16):
      recon, codes, latents, codebook_loss, commitment_loss = self.forward(patches)
    return torch.mean((recon - patches)**2) + codebook_loss + self.beta * commitment_loss, codes, latents

  def __call__(self, patches) -> float:
    self.optimizer.zero_grad(set_to_none=True)
    loss, codes, latents = self.loss(patches)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.optimizer.step()
    with torch.no_grad():
      k = self.usage.shape[0]
      counts = torch.bincount(codes, minlength=k).float()
      self.usage = self.decay * self.usage + (1 - self.decay) * counts / counts.sum().clamp(min=1)
      recent = latents[torch.randint(0, latents.shape[0], (k,))]
      dead = self.usage < self.threshold / k
      self.model.codebook.copy_(torch.where(dead[:, None], recent, self.model.codebook))
      self.usage = torch.where(dead, torch.full_like(self.usage, 1 / k), self.usage)
    return loss.detach()


# ----------------------------------------------------------------------------------------------------------
# ReDimNet (official IDRnD/ReDimNet module names, so state_dicts convert both ways)
# ----------------------------------------------------------------------------------------------------------


class LayerNormChannelsFirst(nn.Module):
  def __init__(self, c, eps=1e-6):
    super().__init__()
    self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

  def forward(self, x):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + self.eps)
    shape = (-1,) + (1,) * (x.ndim - 2)
    return self.weight.view(shape) * x + self.bias.view(shape)


class To1d(nn.Module):
  def forward(self, x):
    b, c, f, t = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, c * f, t)


class To2d(nn.Module):
  def __init__(self, f, c):
    super().__init__()
    self.f, self.c = f, c

  def forward(self, x):
    b, _, t = x.shape
    return x.reshape(b, self.f, self.c, t).permute(0, 2, 1, 3)


class Weight1d(nn.Module):
  """Per-channel softmax weights over the earlier 1-D outputs (official `weigth1d`)."""

  def __init__(self, n, c, requires_grad=True):
    super().__init__()
    self.w = nn.Parameter(torch.zeros(1, n, c, 1), requires_grad=requires_grad)

  def forward(self, xs):
    return (F.softmax(self.w, dim=1) * torch.stack(list(xs), dim=1)).sum(dim=1)


class ResBasicBlock(nn.Module):
  def __init__(self, c, gdiv):
    super().__init__()
    groups = c // gdiv if gdiv is not None else 1
    self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=groups)
    self.conv1pw = nn.Conv2d(c, c, 1) if gdiv is not None else nn.Identity()
    self.bn1 = nn.BatchNorm2d(c)
    self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=groups)
    self.conv2pw = nn.Conv2d(c, c, 1) if gdiv is not None else nn.Identity()
    self.bn2 = nn.BatchNorm2d(c)

  def forward(self, x):
    out = self.bn1(F.relu(self.conv1pw(self.conv1(x))))
    out = self.bn2(self.conv2pw(self.conv2(out)))
    return F.relu(out + x)


class ConvNeXtLikeBlock(nn.Module):
  def __init__(self, c, dim=2, kernel_sizes=((3, 3),), gdiv=1, activation="gelu"):
    super().__init__()
    conv = nn.Conv2d if dim == 2 else nn.Conv1d
    groups = c // gdiv if gdiv is not None else 1
    self.dwconvs = nn.ModuleList([conv(c, c, k, padding="same", groups=groups) for k in kernel_sizes])
    self.norm = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(c * len(kernel_sizes))
    self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
    self.pwconv1 = conv(c * len(kernel_sizes), c, 1)

  def forward(self, x):
    y = torch.cat([conv(x) for conv in self.dwconvs], dim=1)
    return x + self.pwconv1(self.act(self.norm(y)))


class ConvBlock2d(nn.Module):
  def __init__(self, c, block_type, gdiv):
    super().__init__()
    if block_type.startswith("convnext_like"):
      self.conv_block = ConvNeXtLikeBlock(c, 2, ((3, 3),), gdiv, "relu" if block_type.endswith("relu") else "gelu")
    elif block_type == "basic_resnet":
      self.conv_block = ResBasicBlock(c, gdiv)
    else:
      raise ValueError(f"block_2d_type {block_type!r} is not in the benchmark's PyTorch ReDimNet")

  def forward(self, x):
    return self.conv_block(x)


class MultiHeadAttention(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads, self.scaling = heads, (dim // heads)**-0.5
    self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
    self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

  def forward(self, x):
    b, t, d = x.shape
    split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
    q, k, v = split(self.q_proj(x) * self.scaling), split(self.k_proj(x)), split(self.v_proj(x))
    attention = F.softmax(q @ k.transpose(-1, -2), dim=-1)
    return self.out_proj((attention @ v).transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.intermediate_dense, self.output_dense = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.output_dense(F.gelu(self.intermediate_dense(x), approximate="tanh"))


class TransformerEncoderLayer(nn.Module):
  """Post-norm, channels-first in and out (as the official layer inside a 1-D block)."""

  def __init__(self, dim, mlp, heads=4):
    super().__init__()
    self.attention = MultiHeadAttention(dim, heads)
    self.layer_norm = nn.LayerNorm(dim, eps=1e-6)
    self.feed_forward = FeedForward(dim, mlp)
    self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

  def forward(self, x):
    x = x.permute(0, 2, 1)
    x = self.layer_norm(x + self.attention(x))
    x = self.final_layer_norm(x + self.feed_forward(x))
    return x.permute(0, 2, 1)


class TimeContextBlock1d(nn.Module):
  def __init__(self, c, hidden):
    super().__init__()
    self.red_dim_conv = nn.Sequential(nn.Conv1d(c, hidden, 1), LayerNormChannelsFirst(hidden))
    self.tcm = nn.Sequential(*[ConvNeXtLikeBlock(hidden, 1, (k,), 1) for k in (7, 19, 31, 59)],
                             TransformerEncoderLayer(hidden, hidden, 4))
    self.exp_dim_conv = nn.Conv1d(hidden, c, 1)

  def forward(self, x):
    return x + self.exp_dim_conv(self.tcm(self.red_dim_conv(x)))


class Backbone(nn.Module):
  def __init__(self, F_, C, stages_setup, block_2d_type, gdiv):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(1, C, 3, padding="same"), LayerNormChannelsFirst(C), To1d())
    c, f = C, F_
    self.num_stages = len(stages_setup)
    for i, (stride, num_blocks, conv_exp, _kernels, att_red) in enumerate(stages_setup):
      layers = [Weight1d(i + 1, F_ * C if i > 0 else 1, requires_grad=i > 0), To2d(f, c),
                nn.Conv2d(c, stride * c * conv_exp, (stride, 1), stride=(stride, 1))]
      c, f = stride * c, f // stride
      layers += [ConvBlock2d(c * conv_exp, block_2d_type, gdiv) for _ in range(num_blocks)]
      if conv_exp != 1:
        layers.append(nn.Sequential(
            nn.Conv2d(c * conv_exp, c, 3, padding="same", groups=c // gdiv if gdiv is not None else 1),
            nn.BatchNorm2d(c, eps=1e-6), nn.GELU(), nn.Conv2d(c, c, 1)))
      layers.append(To1d())
      if att_red is not None:
        if F_ * C // att_red % 4:
          raise ValueError("attention width must split into 4 heads")
        layers.append(TimeContextBlock1d(F_ * C, F_ * C // att_red))
      setattr(self, f"stage{i}", nn.Sequential(*layers))
    self.fin_wght1d = Weight1d(self.num_stages + 1, F_ * C)

  def forward(self, spec):
    outputs = [self.stem(spec[:, None])]
    for i in range(self.num_stages):
      outputs.append(getattr(self, f"stage{i}")(outputs))
    return self.fin_wght1d(outputs)


class PreEmphasis(nn.Module):
  def __init__(self, coef=0.97):
    super().__init__()
    self.register_buffer("flipped_filter", torch.tensor([[[-coef, 1.0]]]))

  def forward(self, x):
    return F.conv1d(F.pad(x[:, None], (1, 0), "reflect"), self.flipped_filter)[:, 0]


class _Buffers(nn.Module):
  def __init__(self, **buffers):
    super().__init__()
    for name, value in buffers.items():
      self.register_buffer(name, value)


class MelSpectrogram(nn.Module):
  """torchaudio's MelSpectrogram as ReDimNet configures it (power 2, HTK, no norm), from torch.stft."""

  def __init__(self, n_fft, win_length, hop_length, f_min, f_max, n_mels, sample_rate):
    super().__init__()
    self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
    half = (n_fft - win_length) // 2
    window = hamming_window(win_length, n_fft)[half:half + win_length]
    self.spectrogram = _Buffers(window=torch.tensor(window, dtype=torch.float32))
    fb = mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, htk=True)
    self.mel_scale = _Buffers(fb=torch.tensor(fb, dtype=torch.float32))

  def forward(self, x):
    spectrum = torch.stft(x, self.n_fft, self.hop_length, self.win_length, self.spectrogram.window, center=True,
                          pad_mode="reflect", return_complex=True)
    return (spectrum.abs()**2).transpose(1, 2).matmul(self.mel_scale.fb).transpose(1, 2)


class MelBanks(nn.Module):
  def __init__(self, n_mels, hop_length, sample_rate=16000, n_fft=512, win_length=400, f_min=20.0, f_max=7600.0,
               do_preemph=True, **unused):
    super().__init__()
    if unused.get("do_spec_aug") or unused.get("norm_signal") or unused.get("spec_norm", "mn") != "mn":
      raise ValueError("the benchmark's PyTorch MelBanks covers the released configs only")
    self.torchfbank = nn.Sequential(nn.Identity(), PreEmphasis() if do_preemph else nn.Identity(),
                                    MelSpectrogram(n_fft, win_length, hop_length, f_min, f_max, n_mels,
                                                   sample_rate))

  def forward(self, x):
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # float32 features, as vqax's
      x = torch.log(self.torchfbank(x.float()) + 1e-6)
      return x - x.mean(dim=-1, keepdim=True)


class ASTP(nn.Module):
  def __init__(self, in_dim, bottleneck=128, global_context_att=True):
    super().__init__()
    self.global_context_att = global_context_att
    self.linear1 = nn.Conv1d(in_dim * (3 if global_context_att else 1), bottleneck, 1)
    self.linear2 = nn.Conv1d(bottleneck, in_dim, 1)

  def forward(self, x):
    x_in = x
    if self.global_context_att:
      mean = x.mean(dim=-1, keepdim=True).expand_as(x)
      std = torch.sqrt(x.var(dim=-1, keepdim=True) + 1e-7).expand_as(x)
      x_in = torch.cat((x, mean, std), dim=1)
    alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(x_in))), dim=2)
    mean = (alpha * x).sum(2)
    var = (alpha * x**2).sum(2) - mean**2
    return torch.cat([mean, torch.sqrt(var.clamp(min=1e-7))], dim=1)


class ReDimNet(nn.Module):
  """ReDimNetWrap for the released configs (`vqax.models.redimnet.SIZES`): wave [B, T] -> embedding [B, 192]."""

  def __init__(self, model_config: dict):
    super().__init__()
    c = normalize_config(model_config)
    if c["block_1d_type"] != "conv+att" or c["out_channels"] is not None or c["pooling_func"] != "ASTP":
      raise ValueError("the benchmark's PyTorch ReDimNet covers the released configs (conv+att, ASTP) only")
    self.spec = MelBanks(c["F"], c["hop_length"], **melbank_kwargs(c["spec_params"]))
    self.backbone = Backbone(c["F"], c["C"], c["stages_setup"], c["block_2d_type"], c["group_divisor"])
    dim = c["F"] * c["C"]
    self.pool = ASTP(dim, global_context_att=c["global_context_att"])
    self.bn = nn.BatchNorm1d(2 * dim)
    self.linear = nn.Linear(2 * dim, c["embed_dim"])

  def forward(self, wave):
    return self.linear(self.bn(self.pool(self.backbone(self.spec(wave)))))


class MatryoshkaSpeakerModel(nn.Module):
  """ReDimNet -> BatchNorm + Linear projection; class weights for the nested AAM-softmax (vqax.models.mrl)."""

  def __init__(self, model_config: dict, projection_dim: int, num_classes: int):
    super().__init__()
    self.backbone = ReDimNet(model_config)
    embed_dim = self.backbone.linear.out_features
    self.norm = nn.BatchNorm1d(embed_dim)
    self.projection = nn.Linear(embed_dim, projection_dim)
    self.class_weights = nn.Parameter(torch.empty(num_classes, projection_dim))
    nn.init.xavier_uniform_(self.class_weights)

  def forward(self, wave):
    return self.projection(self.norm(self.backbone(wave)))


def matryoshka_aam_loss(z, class_weights, labels, dims, margin, scale):
  """Mean over nested dims of AAM-softmax cross-entropy (vqax.models.mrl.matryoshka_aam_loss, equal weights)."""
  total = 0.0
  threshold = math.cos(math.pi - margin)
  for dim in dims:
    cosine = F.normalize(z[:, :dim]) @ F.normalize(class_weights[:, :dim]).T
    cos_t = cosine.gather(1, labels[:, None])[:, 0].clamp(-1 + 1e-7, 1 - 1e-7)
    phi = cos_t * math.cos(margin) - torch.sqrt(1 - cos_t**2) * math.sin(margin)
    phi = torch.where(cos_t > threshold, phi, cos_t - (1 + threshold))
    target = F.one_hot(labels, cosine.shape[1]).bool()
    total = total + F.cross_entropy(scale * torch.where(target, phi[:, None], cosine), labels)
  return total / len(dims)


def speaker_head_weights_from_flax(model: MatryoshkaSpeakerModel, head_params, head_stats) -> None:
  """Copy a vqax MatryoshkaHead's variables into `model` (the backbone comes from a converted state_dict)."""
  with torch.no_grad():
    model.norm.weight.copy_(torch.from_numpy(np.array(head_params["norm"]["scale"])))
    model.norm.bias.copy_(torch.from_numpy(np.array(head_params["norm"]["bias"])))
    model.norm.running_mean.copy_(torch.from_numpy(np.array(head_stats["norm"]["mean"])))
    model.norm.running_var.copy_(torch.from_numpy(np.array(head_stats["norm"]["var"])))
    model.projection.weight.copy_(torch.from_numpy(np.array(head_params["projection"]["kernel"]).T.copy()))
    model.projection.bias.copy_(torch.from_numpy(np.array(head_params["projection"]["bias"])))
    model.class_weights.copy_(torch.from_numpy(np.array(head_params["class_weights"])))


class SpeakerStep:
  """One "full"-phase step of vqax's ReDimNet-MRL task: nested AAM-softmax, AdamW, global-norm clipping."""

  def __init__(self, model: MatryoshkaSpeakerModel, config, forward=None, bf16: bool = False):
    self.model, self.forward = model, model if forward is None else forward
    self.bf16 = bf16  # autocast to bfloat16 (float32 weights); the loss stays float32, as vqax's
    self.optimizer = torch.optim.AdamW(model.parameters(), lr=float(config.learning_rate),
                                       weight_decay=float(config.weight_decay))
    self.clip = float(config.grad_clip_norm)
    self.dims = tuple(int(d) for d in config.mrl_dims)
    self.margin, self.scale = float(config.margin), float(config.scale)

  def loss(self, wave, labels):
    with torch.autocast(wave.device.type, dtype=torch.bfloat16, enabled=self.bf16):
      z = self.forward(wave)
    return matryoshka_aam_loss(z.float(), self.model.class_weights, labels, self.dims, self.margin, self.scale)

  def __call__(self, wave, labels):
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss(wave, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.optimizer.step()
    return loss.detach()
