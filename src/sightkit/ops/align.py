"""Face alignment: the least-squares similarity transform (Umeyama) from 5 landmarks to the
ArcFace template, and a batched affine warp on ``affine_grid`` / ``grid_sample``.

Coordinates follow OpenCV's ``warpAffine`` (and scikit-image's): the centre of pixel
``(row i, column j)`` is the point ``(x=j, y=i)``. The ArcFace template is given in that
convention. Landmarks in the continuous convention of COCO and of the synthetic datasets
(pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``) are 0.5 larger: subtract 0.5 first.

Everything is batched torch code, so that it runs on the device that holds the images;
the transform is solved in float64 (a 2 x 2 SVD per face).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sightkit._api import export

#: ArcFace's 5 reference points for a 112 x 112 crop, in the order left eye, right eye
#: (as seen in the image), nose tip, left and right mouth corner (insightface).
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


@export("ops.arcface_template")
def arcface_template(size: int = 112, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ArcFace template ``[5, 2]`` (x, y) for a ``size`` x ``size`` crop: the 112-pixel
    points scaled by ``size / 112`` about the pixel-centre origin."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    return torch.tensor(ARCFACE_TEMPLATE_112, dtype=dtype) * (size / 112)


def _check_points(points: Tensor, name: str) -> None:
    if not isinstance(points, Tensor) or not points.is_floating_point():
        got = f"dtype {points.dtype}" if isinstance(points, Tensor) else type(points).__name__
        raise TypeError(f"{name} must be a floating-point tensor [..., N, 2], got {got}")
    if points.dim() < 2 or points.shape[-1] != 2 or points.shape[-2] < 2:
        raise ValueError(f"{name} must have shape [..., N, 2] with N >= 2 points, got {tuple(points.shape)}")


@export("ops.umeyama")
def umeyama(src: Tensor, dst: Tensor, estimate_scale: bool = True) -> Tensor:
    """The least-squares similarity transform that maps ``src`` onto ``dst`` (Umeyama, "Least-squares
    estimation of transformation parameters between two point patterns", TPAMI 1991).

    Minimises ``sum_i |dst_i - (s R src_i + t)|^2`` over a rotation ``R`` (never a reflection),
    a scale ``s > 0`` (1 with ``estimate_scale=False``) and a translation ``t``; the same
    transform as scikit-image's ``SimilarityTransform.estimate`` / ``EuclideanTransform``.

    Args:
        src: ``[..., N, 2]`` points (x, y), N >= 2, not all equal.
        dst: ``[..., N, 2]`` or ``[N, 2]`` (one target for the whole batch, e.g. the template).
        estimate_scale: solve for ``s``; False keeps ``s = 1``.

    Returns:
        ``[..., 2, 3]`` matrices ``[s R | t]`` in ``src``'s dtype: ``dst ≈ M @ [x, y, 1]``.

    Raises:
        ValueError: shapes disagree, or a set of ``src`` points is a single point (no
            rotation or scale can be solved for).
    """
    _check_points(src, "src")
    _check_points(dst, "dst")
    if dst.shape[-2] != src.shape[-2]:
        raise ValueError(f"dst must have as many points as src ({src.shape[-2]}), got {tuple(dst.shape)}")
    src64 = src.double()
    dst64 = dst.double().to(src.device).expand_as(src64)
    count = src.shape[-2]
    src_mean, dst_mean = src64.mean(-2, keepdim=True), dst64.mean(-2, keepdim=True)
    src_centred, dst_centred = src64 - src_mean, dst64 - dst_mean
    src_var = src_centred.square().sum((-2, -1)) / count
    if src.numel() and bool((src_var <= 1e-12 * (1 + src_mean.square().sum((-2, -1)))).any()):
        raise ValueError("src holds a set of coincident points; a similarity transform needs two distinct points")
    covariance = dst_centred.transpose(-2, -1) @ src_centred / count
    u, singular, vh = torch.linalg.svd(covariance)
    # A proper rotation: flip the last axis when U Vh would be a reflection (Umeyama's S,
    # which also covers the rank-deficient case of collinear points).
    d = torch.ones_like(singular)
    d[..., -1] = torch.linalg.det(u) * torch.linalg.det(vh)
    rotation = u @ torch.diag_embed(d) @ vh
    scale = (singular * d).sum(-1) / src_var if estimate_scale else torch.ones_like(src_var)
    linear = scale[..., None, None] * rotation
    translation = dst_mean.transpose(-2, -1) - linear @ src_mean.transpose(-2, -1)
    return torch.cat([linear, translation], dim=-1).to(src.dtype)


def _to_normalised(height: int, width: int, like: Tensor) -> Tensor:
    """``[3, 3]``: pixel-centre coordinates -> ``grid_sample``'s [-1, 1] (``align_corners=False``)."""
    return like.new_tensor([[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]])


def _homogeneous(matrices: Tensor) -> Tensor:
    bottom = matrices.new_tensor([0.0, 0.0, 1.0]).expand(*matrices.shape[:-2], 1, 3)
    return torch.cat([matrices, bottom], dim=-2)


@export("ops.warp_affine")
def warp_affine(images: Tensor, matrices: Tensor, size: tuple[int, int] | int) -> Tensor:
    """Warp each image by an affine matrix with bilinear sampling, outside pixels 0: the result
    of OpenCV's ``cv2.warpAffine(image, M, (w, h))`` (``INTER_LINEAR``, ``BORDER_CONSTANT``),
    batched on ``grid_sample``.

    Args:
        images: ``[B, C, H, W]`` floating, or uint8 (sampled in float32).
        matrices: ``[B, 2, 3]`` maps from input to output pixel coordinates (pixel centres at
            integers): output point = ``M @ [x, y, 1]``.
        size: output ``(h, w)``, or one int for a square.

    Returns:
        ``[B, C, h, w]``, floating (float32 for uint8 input).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [B, C, H, W], got {got}")
    if not isinstance(matrices, Tensor) or matrices.shape != (images.shape[0], 2, 3):
        got = tuple(matrices.shape) if isinstance(matrices, Tensor) else type(matrices).__name__
        raise ValueError(f"matrices must have shape [B, 2, 3] = [{images.shape[0]}, 2, 3], got {got}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not images.is_floating_point():
        images = images.float()
    in_height, in_width = images.shape[-2:]
    # grid_sample wants, per output pixel, where to read in the input: the inverse map,
    # taken between the two normalised coordinate systems.
    inverse = torch.linalg.inv(_homogeneous(matrices.double()))
    theta = (
        _to_normalised(in_height, in_width, inverse)
        @ inverse
        @ torch.linalg.inv(_to_normalised(height, width, inverse))
    )
    grid = F.affine_grid(theta[:, :2].to(images.dtype), [images.shape[0], 1, height, width], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@export("ops.align_faces")
def align_faces(
    images: Tensor, landmarks: Tensor, size: int = 112, image_index: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Crop faces aligned to the ArcFace template: the similarity that maps each face's 5
    landmarks onto :func:`arcface_template` (least squares, :func:`umeyama`) warps its image.

    Args:
        images: ``[B, 3, H, W]`` RGB, floating or uint8. The crops keep the value range; the
            embedders of :mod:`sightkit.models.face` expect ``(pixel / 255 - 0.5) / 0.5``
            applied afterwards (insightface's normalisation).
        landmarks: ``[N, 5, 2]`` (x, y) in pixels of ``images`` (pixel centres at integers;
            module docstring), ordered left eye, right eye, nose, left and right mouth corner.
        size: side of the square crops; the template is scaled by ``size / 112``.
        image_index: ``[N]`` index into ``images`` of each face; ``None`` means face ``i``
            is in image ``i`` (then ``N == B``).

    Returns:
        ``(crops [N, 3, size, size], matrices [N, 2, 3])``, the matrices mapping image pixels
        to crop pixels (apply them to boxes or other points).
    """
    _check_points(landmarks, "landmarks")
    if landmarks.dim() != 3 or landmarks.shape[1] != 5:
        raise ValueError(f"landmarks must have shape [N, 5, 2] (5 points per face), got {tuple(landmarks.shape)}")
    if image_index is None:
        if landmarks.shape[0] != images.shape[0]:
            raise ValueError(
                f"without image_index, landmarks must hold one face per image ({images.shape[0]}), "
                f"got {landmarks.shape[0]}; pass image_index [N] to crop several faces per image"
            )
        sources = images
    else:
        if image_index.shape != landmarks.shape[:1]:
            raise ValueError(
                f"image_index must have shape [N] = [{landmarks.shape[0]}], got {tuple(image_index.shape)}"
            )
        sources = images[image_index.to(images.device)]
    template = arcface_template(size, torch.float64).to(landmarks.device)
    matrices = umeyama(landmarks, template)
    return warp_affine(sources, matrices.to(sources.device), size), matrices
