"""Peer models for the converter tests, with every parameter and buffer drawn at random."""

from __future__ import annotations

import math

import torch
from torch import nn


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw every floating-point parameter and buffer of ``module`` in place: BatchNorm
    variances in [0.5, 1.5], norm scales around 1, biases and means around 0, weight matrices
    with variance 1/fan-in (activations stay of order 1 through deep networks). Fresh norms
    (scale 1, shift 0) and frozen BatchNorm (the identity) would hide a misplaced tensor."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.ndim == 1 and name.endswith("weight"):
                tensor.copy_(1 + 0.2 * noise)
            elif tensor.ndim <= 1:
                tensor.copy_(0.1 * noise)
            else:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
    return module


def padded_batch(height: int = 64, width: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images, the second padded at the bottom and right: ``[2, 3, H, W]`` and its mask ``[2, H, W]``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, height, width, generator=generator)
    mask = torch.zeros(2, height, width, dtype=torch.bool)
    mask[1, height * 3 // 4 :, :] = True
    mask[1, :, width // 2 :] = True
    images[mask[:, None].expand_as(images)] = 0.0
    return images, mask


# --------------------------------------------------------------------------- insightface (arcface_torch)
# Transcriptions of the module structure (names and forward) of insightface's
# recognition/arcface_torch/backbones/{iresnet,mobilefacenet}.py, which their backbone.pth
# files are state dicts of.


class InsightfaceIBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x)))))) + identity


class InsightfaceIResNet(nn.Module):
    """arcface_torch's IResNet at 112 x 112, 512-d (``fp16=False``, ``dropout=0``)."""

    def __init__(self, layers: tuple[int, int, int, int], num_features: int = 512) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-05)
        )
        layers = [InsightfaceIBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [InsightfaceIBasicBlock(planes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class _ConvBlock(nn.Module):
    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, groups=groups, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _LinearBlock(nn.Module):
    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(out_c)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _DepthWise(nn.Module):
    def __init__(self, in_c: int, out_c: int, residual: bool, stride: int, groups: int) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            _ConvBlock(in_c, groups),
            _ConvBlock(groups, groups, 3, stride, 1, groups=groups),
            _LinearBlock(groups, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.residual else self.layers(x)


class _Residual(nn.Module):
    def __init__(self, c: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[_DepthWise(c, c, True, 1, groups) for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class InsightfaceMobileFaceNet(nn.Module):
    """arcface_torch's MobileFaceNet (``get_mbf``: blocks (1, 4, 6, 2), scale 2, 112 x 112)."""

    def __init__(self, num_features: int = 512, blocks: tuple[int, ...] = (1, 4, 6, 2), scale: int = 2) -> None:
        super().__init__()
        c64, c128 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(_ConvBlock(3, c64, 3, 2, 1))
        if blocks[0] == 1:
            self.layers.append(_ConvBlock(c64, c64, 3, 1, 1, groups=64))
        else:
            self.layers.append(_Residual(c64, blocks[0], 128))
        self.layers.extend(
            [
                _DepthWise(c64, c64, False, 2, 128),
                _Residual(c64, blocks[1], 128),
                _DepthWise(c64, c128, False, 2, 256),
                _Residual(c128, blocks[2], 256),
                _DepthWise(c128, c128, False, 2, 512),
                _Residual(c128, blocks[3], 256),
            ]
        )
        self.conv_sep = _ConvBlock(c128, 512)
        self.features = nn.Module()
        self.features.layers = nn.Sequential(
            _LinearBlock(512, 512, 7, 1, 0, groups=512), nn.Flatten(), nn.Linear(512, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features.layers(self.conv_sep(x))


# --------------------------------------------------------------------------- RLE (res-loglikelihood-regression)


class _RLELinear(nn.Module):
    """rlepose's ``Linear``: ``y = x W^T / |x| + b`` (``norm=True``) or ``x W^T + b``."""

    def __init__(self, in_channel: int, out_channel: int, norm: bool = True) -> None:
        super().__init__()
        self.norm = norm
        self.linear = nn.Linear(in_channel, out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.matmul(self.linear.weight.t())
        if self.norm:
            y = y / torch.norm(x, dim=1, keepdim=True)
        return y + self.linear.bias


class RegressFlow(nn.Module):
    """rlepose's ``RegressFlow`` at inference (ResNet-50 ``preact``, no extra FC layers, 17 joints),
    with the RealNVP transcription of benchmarks/rle_loss.py."""

    def __init__(self, num_joints: int = 17) -> None:
        super().__init__()
        import torchvision

        from benchmarks.rle_loss import OfficialRealNVP

        resnet = torchvision.models.resnet50(weights=None)
        del resnet.fc  # rlepose's own ResNet has no classifier
        resnet.fc = None
        self.preact = resnet
        self.num_joints = num_joints
        self.fc_coord = _RLELinear(2048, num_joints * 2)
        self.fc_sigma = _RLELinear(2048, num_joints * 2, norm=False)
        self.flow = OfficialRealNVP()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.preact
        feat = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
        feat = feat.mean((2, 3))
        coords = self.fc_coord(feat).reshape(x.shape[0], self.num_joints, 2)
        sigma = self.fc_sigma(feat).reshape(x.shape[0], self.num_joints, -1).sigmoid() + 1e-9
        return coords, sigma


# --------------------------------------------------------------------------- IDEA-Research DINO (4scale)
# A transcription of the inference path of github.com/IDEA-Research/DINO (models/dino/dino.py,
# deformable_transformer.py, utils.py, position_encoding.py, ops' pure-PyTorch deformable
# attention) with its module names, so that its state dict has the checkpoints' keys. Built
# as DINO-4scale (two-stage "standard", shared decoder heads, separate encoder heads,
# tgt_embed content queries, dropout 0), without the denoising queries of training.


def _idea_inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _idea_sine(mask: torch.Tensor, feats: int, temperature: float) -> torch.Tensor:
    not_mask = (~mask).float()
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = temperature ** (2 * (torch.arange(feats, dtype=torch.float32) // 2) / feats)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


def _idea_box_sine(boxes: torch.Tensor) -> torch.Tensor:
    """gen_sineembed_for_position for ``[..., 4]`` boxes: 128 features each of y, x, w, h."""
    dim_t = 10000 ** (2 * (torch.arange(128, dtype=torch.float32) // 2) / 128)
    parts = []
    for index in (1, 0, 2, 3):
        p = boxes[..., index, None] * 2 * math.pi / dim_t
        parts.append(torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2))
    return torch.cat(parts, dim=-1)


class _IdeaMLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip(dims, [hidden_dim] * (num_layers - 1) + [output_dim], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = torch.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class _IdeaMSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(self, query, reference_points, value, shapes, padding_mask):
        batch, queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points).softmax(-1)
        weights = weights.view(batch, queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
            locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        else:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        # ms_deform_attn_core_pytorch: bilinear sampling of each level, weighted sum.
        per_level = value.split([h * w for h, w in shapes], dim=1)
        grids = 2 * locations - 1
        sampled = []
        for level, (h, w) in enumerate(shapes):
            v = per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, -1, h, w)
            g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
            sampled.append(
                torch.nn.functional.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
            )
        weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
        out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(batch, heads * value.shape[-1], queries)
        return self.output_proj(out.transpose(1, 2))


class _IdeaEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int) -> None:
        super().__init__()
        self.self_attn = _IdeaMSDeformAttn(d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, shapes, padding_mask):
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, shapes, padding_mask))
        return self.norm2(src + self.linear2(torch.relu(self.linear1(src))))


class _IdeaDecoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int) -> None:
        super().__init__()
        self.cross_attn = _IdeaMSDeformAttn(d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, 8)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, memory, shapes, padding_mask):
        q = k = (tgt + query_pos).transpose(0, 1)  # nn.MultiheadAttention is sequence-first here
        tgt = self.norm2(tgt + self.self_attn(q, k, tgt.transpose(0, 1))[0].transpose(0, 1))
        tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, reference_points, memory, shapes, padding_mask))
        return self.norm3(tgt + self.linear2(torch.relu(self.linear1(tgt))))


class IdeaDINO(nn.Module):
    """DINO-4scale's inference (module comment), ``num_classes`` 91 and a label book of 91."""

    def __init__(
        self, backbone: str = "resnet50", enc_layers: int = 6, dec_layers: int = 6, d_ffn: int = 2048,
        num_queries: int = 900, num_classes: int = 91,
    ) -> None:  # fmt: skip
        super().__init__()
        import torchvision
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.ops import FrozenBatchNorm2d

        d = 256
        resnet = getattr(torchvision.models, backbone)(norm_layer=FrozenBatchNorm2d)
        self.backbone = nn.ModuleList([nn.Module()])
        self.backbone[0].body = IntermediateLayerGetter(resnet, {"layer2": "0", "layer3": "1", "layer4": "2"})
        channels = [resnet.layer2[-1].conv1.in_channels, resnet.layer3[-1].conv1.in_channels, resnet.inplanes]
        self.input_proj = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(32, d)) for c in channels]
            + [nn.Sequential(nn.Conv2d(channels[-1], d, 3, 2, 1), nn.GroupNorm(32, d))]
        )
        self.label_enc = nn.Embedding(92, d)
        t = self.transformer = nn.Module()
        t.level_embed = nn.Parameter(torch.zeros(4, d))
        t.encoder = nn.Module()
        t.encoder.layers = nn.ModuleList(_IdeaEncoderLayer(d, d_ffn) for _ in range(enc_layers))
        t.decoder = nn.Module()
        t.decoder.layers = nn.ModuleList(_IdeaDecoderLayer(d, d_ffn) for _ in range(dec_layers))
        t.decoder.norm = nn.LayerNorm(d)
        t.decoder.ref_point_head = _IdeaMLP(2 * d, d, d, 2)
        t.enc_output = nn.Linear(d, d)
        t.enc_output_norm = nn.LayerNorm(d)
        t.tgt_embed = nn.Embedding(num_queries, d)
        class_embed, bbox_embed = nn.Linear(d, num_classes), _IdeaMLP(d, d, 4, 3)
        self.class_embed = nn.ModuleList([class_embed] * dec_layers)  # shared by every layer
        self.bbox_embed = nn.ModuleList([bbox_embed] * dec_layers)
        t.decoder.class_embed, t.decoder.bbox_embed = self.class_embed, self.bbox_embed
        t.enc_out_class_embed = nn.Linear(d, num_classes)
        t.enc_out_bbox_embed = _IdeaMLP(d, d, 4, 3)
        self.num_queries = num_queries

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.transformer
        features = list(self.backbone[0].body(images).values())
        srcs = [proj(f) for proj, f in zip(self.input_proj, features, strict=False)]
        srcs.append(self.input_proj[3](features[-1]))
        masks = [torch.nn.functional.interpolate(mask[None].float(), size=s.shape[-2:]).bool()[0] for s in srcs]
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        pos = [_idea_sine(m, 128, 20.0).flatten(2).transpose(1, 2) + t.level_embed[i] for i, m in enumerate(masks)]
        src, pos = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1), torch.cat(pos, 1)
        padding = torch.cat([m.flatten(1) for m in masks], 1)
        valid = torch.stack([torch.stack([(~m[:, 0, :]).sum(1) / m.shape[2], (~m[:, :, 0]).sum(1) / m.shape[1]], -1)
                             for m in masks], 1).float()  # fmt: skip  # [B, L, (w, h)]
        refs = []
        for level, (h, w) in enumerate(shapes):
            ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing="ij")
            refs.append(torch.stack((rx.reshape(-1)[None] / (valid[:, None, level, 0] * w),
                                     ry.reshape(-1)[None] / (valid[:, None, level, 1] * h)), -1))  # fmt: skip
        reference_points = torch.cat(refs, 1)[:, :, None] * valid[:, None]
        memory = src
        for layer in t.encoder.layers:
            memory = layer(memory, pos, reference_points, shapes, padding)
        # gen_encoder_output_proposals
        proposals, start = [], 0
        for level, (h, w) in enumerate(shapes):
            m = padding[:, start : start + h * w].view(-1, h, w)
            vh, vw = (~m[:, :, 0]).sum(1), (~m[:, 0, :]).sum(1)
            gy, gx = torch.meshgrid(torch.linspace(0, h - 1, h), torch.linspace(0, w - 1, w), indexing="ij")
            grid = (torch.stack([gx, gy], -1)[None] + 0.5) / torch.stack([vw, vh], -1).view(-1, 1, 1, 2)
            proposals.append(torch.cat([grid, torch.full_like(grid, 0.05 * 2.0**level)], -1).view(len(m), -1, 4))
            start += h * w
        proposals = torch.cat(proposals, 1)
        ok = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        proposals = proposals.masked_fill(padding[..., None], float("inf")).masked_fill(~ok, float("inf"))
        out_memory = memory.masked_fill(padding[..., None], 0.0).masked_fill(~ok, 0.0)
        out_memory = t.enc_output_norm(t.enc_output(out_memory))
        enc_class = t.enc_out_class_embed(out_memory)
        enc_coord = t.enc_out_bbox_embed(out_memory) + proposals
        top = torch.topk(enc_class.max(-1)[0], self.num_queries, dim=1)[1]
        reference = torch.gather(enc_coord, 1, top[..., None].repeat(1, 1, 4)).sigmoid()
        output = t.tgt_embed.weight[None].repeat(len(images), 1, 1)
        level_scale = torch.cat([valid, valid], -1)[:, None]
        logits, boxes = [], []
        for layer_id, layer in enumerate(t.decoder.layers):
            ref_input = reference[:, :, None] * level_scale
            query_pos = t.decoder.ref_point_head(_idea_box_sine(ref_input[:, :, 0, :]))
            output = layer(output, query_pos, ref_input, memory, shapes, padding)
            normed = t.decoder.norm(output)
            boxes.append((self.bbox_embed[layer_id](normed) + _idea_inverse_sigmoid(reference)).sigmoid())
            logits.append(self.class_embed[layer_id](normed))
            reference = (self.bbox_embed[layer_id](output) + _idea_inverse_sigmoid(reference)).sigmoid()
        return {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "aux_logits": logits[:-1], "aux_boxes": boxes[:-1]}
