"""Multi-scale deformable attention: the core equals a straightforward bilinear-sampling loop
in float64 on both of its paths (inference: a weighted gather; training: grid_sample), passes
gradcheck, and exports to ONNX; the module's sampling locations follow the paper (pixel offsets
for points, box-scaled offsets for boxes) and equal transformers'."""

import math

import pytest
import torch
import torch.nn.functional as F

from sightkit.nn import MultiScaleDeformableAttention, ms_deform_attn

SHAPES = [(5, 7), (3, 4), (2, 2)]


def reference_ms_deform_attn(
    value: torch.Tensor, shapes: list, locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The definition, one sample at a time: a level is an h x w grid of pixels whose centres
    sit at ((i + 0.5) / w, (j + 0.5) / h); a location reads the four surrounding pixels with
    bilinear weights, pixels outside the map reading 0."""
    batch, _, heads, dim = value.shape
    _, queries, _, _, points, _ = locations.shape
    out = torch.zeros(batch, queries, heads, dim, dtype=value.dtype)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    grid = value[b, starts[lvl] : starts[lvl + 1], m].reshape(h, w, dim)
                    for p in range(points):
                        x = locations[b, q, m, lvl, p, 0].item() * w - 0.5
                        y = locations[b, q, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(dim, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample += wy * wx * grid[yy, xx]
                        out[b, q, m] += weights[b, q, m, lvl, p] * sample
    return out.flatten(2)


def random_inputs(batch: int = 2, queries: int = 3, heads: int = 2, dim: int = 3, points: int = 2) -> tuple:
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, heads, dim, dtype=torch.float64)
    # Some locations fall outside [0, 1]: they read zero padding.
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, dtype=torch.float64)
    return value, locations, weights


@pytest.mark.parametrize("training", [False, True], ids=["inference-gather", "training-grid_sample"])
def test_equals_the_bilinear_loop_in_float64(training: bool) -> None:
    value, locations, weights = random_inputs()
    assert ((locations < 0) | (locations > 1)).any()
    expected = reference_ms_deform_attn(value, SHAPES, locations, weights)
    got = ms_deform_attn(value.requires_grad_(training), SHAPES, locations, weights)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-12, atol=1e-12)


def test_inference_on_the_cpu_runs_no_grid_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("grid_sample called")

    value, locations, weights = random_inputs()
    monkeypatch.setattr(F, "grid_sample", refuse)
    ms_deform_attn(value, SHAPES, locations, weights)
    with torch.inference_mode():
        ms_deform_attn(value.requires_grad_(), SHAPES, locations, weights)
    with pytest.raises(AssertionError, match="grid_sample called"):  # a gradient is wanted: training's path
        ms_deform_attn(value, SHAPES, locations, weights)


def test_both_paths_agree_on_edges_and_far_outside() -> None:
    """Locations on the outer pixel edges and centre lines, one pixel beyond, and far outside
    (float32, several heads and images): the gather reads its zero border where grid_sample pads."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(6, 9), (3, 5), (1, 1)]
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(3, tokens, 4, 8, generator=generator)
    candidates = torch.tensor([-1e9, -0.5, -0.1, 0.0, 1 / 18, 1 / 9, 0.5, 0.75, 1.0, 1.1, 1.5, 3.0, 1e9])
    picks = torch.randint(len(candidates), (3, 40, 4, len(shapes), 2, 2), generator=generator)
    locations = torch.where(
        torch.rand(picks.shape, generator=generator) < 0.5, candidates[picks], torch.rand(picks.shape)
    )
    weights = torch.rand(3, 40, 4, len(shapes), 2, generator=generator)
    with torch.no_grad():
        gathered = ms_deform_attn(value, shapes, locations, weights)
    sampled = ms_deform_attn(value.requires_grad_(), shapes, locations, weights).detach()
    torch.testing.assert_close(gathered, sampled, atol=1e-5, rtol=1e-5)
    assert gathered.abs().sum() > 0


@pytest.mark.parametrize("training", [False, True], ids=["inference-gather", "training-grid_sample"])
@pytest.mark.parametrize(("batch", "queries"), [(2, 0), (0, 3)])
def test_no_queries_or_no_images_give_an_empty_result(training: bool, batch: int, queries: int) -> None:
    value, locations, weights = random_inputs(batch=batch, queries=queries)
    out = ms_deform_attn(value.requires_grad_(training), SHAPES, locations, weights)
    assert out.shape == (batch, queries, value.shape[2] * value.shape[3]) and out.dtype == value.dtype
    if training:  # nothing is read, so every value gets a zero gradient
        out.sum().backward()
        torch.testing.assert_close(value.grad, torch.zeros_like(value), rtol=0, atol=0)


def test_a_non_contiguous_value_is_read_as_its_values() -> None:
    value, locations, weights = random_inputs()
    strided = value.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not strided.is_contiguous()
    expected = reference_ms_deform_attn(value, SHAPES, locations, weights)
    torch.testing.assert_close(ms_deform_attn(strided, SHAPES, locations, weights), expected, rtol=1e-12, atol=1e-12)


def test_non_finite_locations_are_read_as_the_border_at_inference() -> None:
    """The gather needs a valid row for every corner: NaN reads the zero border, +-inf clamps to it
    (grid_sample returns NaN for these; a model that yields them has NaN attention weights too)."""
    value = torch.randn(1, 4, 1, 2)
    locations = torch.tensor([float("nan"), 0.25, float("inf"), 0.25, -float("inf"), 0.75]).reshape(1, 3, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(2, 2)], locations, torch.ones(1, 3, 1, 1, 1))
    # Each location's x reads the zero border, whatever its y.
    torch.testing.assert_close(out, torch.zeros(1, 3, 2))


def test_bfloat16_values_are_sampled_and_summed_in_float32() -> None:
    # The result is the float64 definition on the bfloat16 inputs, rounded once to bfloat16 (within
    # one bfloat16 step, 2**-8 relative): sampling and summing in bfloat16 would round every term.
    value, locations, weights = random_inputs(queries=8, dim=16, points=4)
    value = value.to(torch.bfloat16)
    expected = reference_ms_deform_attn(value.double(), SHAPES, locations.float().double(), weights.float().double())
    got = ms_deform_attn(value, SHAPES, locations.float(), weights.float())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), expected, rtol=2**-8, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ms_deform_attn(value, SHAPES, locations.float(), weights.float()), got)


def test_a_pixel_centre_reads_that_pixel() -> None:
    """Hand value: one level, one point at the centre of pixel (row 1, column 2) of a 3 x 4 map."""
    value = torch.arange(12.0).reshape(1, 12, 1, 1)
    location = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3]).reshape(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(3, 4)], location, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(6.0)  # row-major index 1 * 4 + 2
    # Half-way between pixels 6 and 7, weighted by 0.5.
    location[..., 0] = 3 / 4
    assert ms_deform_attn(value, [(3, 4)], location, torch.full((1, 1, 1, 1, 1), 0.5)).item() == pytest.approx(3.25)


def test_gradcheck() -> None:
    value, locations, weights = random_inputs(batch=1, queries=2, heads=1, dim=2, points=1)
    # Away from pixel-centre lines, where bilinear interpolation has kinks.
    locations = locations.clamp(0.05, 0.95)
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn(v, SHAPES, loc, w), inputs)


def test_bad_shapes_are_errors() -> None:
    value, locations, weights = random_inputs()
    with pytest.raises(ValueError, match=r"value must be a tensor of shape \[B, N, M, D\], got .* \(2, 3\)"):
        ms_deform_attn(torch.zeros(2, 3), SHAPES, locations, weights)
    with pytest.raises(ValueError, match=r"value has N = 51 tokens but spatial_shapes .* account for 48"):
        ms_deform_attn(value, [(5, 7), (3, 4), (1, 1)], locations, weights)
    with pytest.raises(
        ValueError, match=r"sampling_locations must have shape \[B, Q, M, L, P, 2\] = \[2, 3, 2, 2, 2, 2\]"
    ):
        ms_deform_attn(value, SHAPES[:2], locations, weights)
    with pytest.raises(ValueError, match=r"spatial_shapes must hold at least one \(h, w\) pair, got none"):
        ms_deform_attn(value, [], locations, weights)
    with pytest.raises(ValueError, match=r"attention_weights must have shape \[B, Q, M, L, P\] = \[2, 3, 2, 3, 2\]"):
        ms_deform_attn(value, SHAPES, locations, weights[..., :1])


def identity_module(n_levels: int, n_points: int) -> MultiScaleDeformableAttention:
    """One head, identity value and output projections, constant offsets from the bias only."""
    module = MultiScaleDeformableAttention(d_model=1, n_levels=n_levels, n_heads=1, n_points=n_points).double()
    with torch.no_grad():
        for layer in (module.value_proj, module.output_proj):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    return module


def ramp(shapes: list) -> torch.Tensor:
    """Each level's value at a pixel is its normalised x centre: bilinear sampling of it at x gives x."""
    return torch.cat([((torch.arange(w, dtype=torch.float64) + 0.5) / w).repeat(h) for h, w in shapes]).reshape(
        1, -1, 1
    )


def test_point_references_move_by_pixels_and_box_references_by_box_size() -> None:
    shapes = [(8, 10)]
    module = identity_module(1, 1)
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(torch.tensor([2.0, 0.0]))  # two pixels right
    query = torch.zeros(1, 1, 1, dtype=torch.float64)
    point = torch.tensor([0.35, 0.5], dtype=torch.float64).reshape(1, 1, 1, 2)
    out = module(query, point, ramp(shapes), shapes)
    assert out.item() == pytest.approx(0.35 + 2 / 10)
    # A box (cx, cy, w, h): the offset counts half widths divided by n_points: 0.35 + 2 * 0.2 / 2.
    box = torch.tensor([0.35, 0.5, 0.2, 0.4], dtype=torch.float64).reshape(1, 1, 1, 4)
    assert module(query, box, ramp(shapes), shapes).item() == pytest.approx(0.35 + 2 * 0.2 / 2)


def test_initial_points_lie_on_rays_one_to_n_pixels_out() -> None:
    module = MultiScaleDeformableAttention(d_model=8, n_levels=2, n_heads=4, n_points=3)
    offsets = module.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 1 points along +y (angle pi/2), steps 1, 2, 3; head 2 along -x.
    torch.testing.assert_close(offsets[1, 0], torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(offsets[2, 1], torch.tensor([[-1.0, 0.0], [-2.0, 0.0], [-3.0, 0.0]]), atol=1e-6, rtol=0)
    assert module.attention_weights.weight.abs().sum() == 0


def test_padding_is_never_read() -> None:
    module = MultiScaleDeformableAttention(d_model=8, n_levels=len(SHAPES), n_heads=2, n_points=3)
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(1, tokens, 8)
    padding = torch.zeros(1, tokens, dtype=torch.bool)
    padding[0, ::3] = True
    query = torch.randn(1, 4, 8)
    refs = torch.rand(1, 4, len(SHAPES), 2)
    out = module(query, refs, value, SHAPES, padding)
    changed = value.clone()
    changed[padding] = torch.randn(int(padding.sum()), 8) * 100
    torch.testing.assert_close(module(query, refs, changed, SHAPES, padding), out)
    assert not torch.allclose(module(query, refs, changed, SHAPES), out)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_equals_transformers_deformable_attention_with_the_same_weights(ref_dim: int) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.deformable_detr import modeling_deformable_detr as peer_module

    levels, heads, points, d_model = len(SHAPES), 2, 3, 16
    config = transformers.DeformableDetrConfig(d_model=d_model, num_feature_levels=levels, disable_custom_kernels=True)
    peer = peer_module.DeformableDetrMultiscaleDeformableAttention(config, num_heads=heads, n_points=points).eval()
    ours = MultiScaleDeformableAttention(d_model, levels, heads, points).eval()
    for layer in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
        torch.nn.init.normal_(getattr(ours, layer).weight, std=0.1)
    peer.load_state_dict(ours.state_dict())
    tokens = sum(h * w for h, w in SHAPES)
    value, query, pos = torch.randn(2, tokens, d_model), torch.randn(2, 5, d_model), torch.randn(2, 5, d_model)
    refs = torch.rand(2, 5, levels, ref_dim) * 0.6 + 0.2
    padding = torch.zeros(2, tokens, dtype=torch.bool)
    padding[1, -10:] = True
    shapes = torch.tensor(SHAPES)
    with torch.no_grad():
        theirs = peer(
            query,
            attention_mask=~padding,
            encoder_hidden_states=value,
            position_embeddings=pos,
            reference_points=refs,
            spatial_shapes=shapes,
            spatial_shapes_list=SHAPES,
            level_start_index=torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]]),
        )[0]
        mine = ours(query + pos, refs, value, SHAPES, padding)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_onnx_export_matches_eager(tmp_path: object) -> None:
    ort = pytest.importorskip("onnxruntime")

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = MultiScaleDeformableAttention(d_model=16, n_levels=len(SHAPES), n_heads=2, n_points=3)
            torch.nn.init.normal_(self.attention.sampling_offsets.weight, std=0.5)

        def forward(self, query: torch.Tensor, refs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            return self.attention(query, refs, value, SHAPES)

    model = Wrapped().eval()
    tokens = sum(h * w for h, w in SHAPES)
    inputs = (torch.randn(2, 6, 16), torch.rand(2, 6, len(SHAPES), 4), torch.randn(2, tokens, 16))
    path = tmp_path / "msda.onnx"
    torch.onnx.export(model, inputs, path, dynamo=True, optimize=False, opset_version=18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(*inputs), atol=1e-5, rtol=1e-5)
