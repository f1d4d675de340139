"""Head pose (yaw, pitch, roll) from the 5 face landmarks and a fixed 3D mean face.

Angles follow the synthetic faces (:class:`sightkit.data.synthetic.faces.FacePose`): the face
frame has x to the image's right, y down and z out of the face towards the camera; a face
point ``X`` appears at ``s (R X)[:2] + t`` with ``R = Rz(roll) Ry(yaw) Rx(pitch)``. Positive
yaw turns the nose towards the image's right, positive pitch tilts it down, positive roll
turns the face clockwise in the image. A frontal, upright face has all three at 0.

Two solvers:

- Without a camera, the scaled orthographic ("weak perspective") fit in closed form: the
  least-squares affine map ``M [2, 3]`` from the centred model points to the centred
  landmarks, then the nearest pair of orthonormal rows ``s [r1; r2]`` (an SVD) and
  ``r3 = r1 x r2`` (the POS step of DeMenthon and Davis, "Model-based object pose in 25 lines
  of code", IJCV 1995). Faces are small against their distance to the camera in most photos,
  so this is what face pipelines use; it is batched torch code.
- With ``image_size`` or ``camera``, OpenCV's ``solvePnP`` (SQPnP, Terzakis and Lourakis,
  ECCV 2020) under a pinhole camera, face by face: for close-ups, where perspective matters.

Five points fix a pose, not a face shape: the angles are those of the mean face that fits the
landmarks best, so a face whose nose stands out more than the model's reads as more turned.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sightkit._api import export

#: A generic mean face in the pixels of ArcFace's 112 x 112 template (x right, y down, z towards
#: the camera, nose tip at z = 0): the template's frontal layout made left-right symmetric, with
#: depths in the proportions of an average adult head (eyes about 0.43 and mouth corners about 0.40
#: interocular distances behind the nose tip).
MEAN_FACE_3D = (
    (-17.62, -20.14, -15.1),
    (17.62, -20.14, -15.1),
    (0.0, 0.0, 0.0),
    (-14.59, 20.54, -14.0),
    (14.59, 20.54, -14.0),
)


@export("ops.mean_face_3d")
def mean_face_3d(dtype: torch.dtype = torch.float64) -> Tensor:
    """The default 3D model ``[5, 3]`` of :func:`head_pose` (:data:`MEAN_FACE_3D`), in ArcFace's
    landmark order: left eye, right eye (as seen in the image), nose tip, left and right mouth corner."""
    return torch.tensor(MEAN_FACE_3D, dtype=dtype)


def _check_landmarks(landmarks: Tensor) -> None:
    if not isinstance(landmarks, Tensor) or not landmarks.is_floating_point():
        got = f"dtype {landmarks.dtype}" if isinstance(landmarks, Tensor) else type(landmarks).__name__
        raise TypeError(f"landmarks must be a floating-point tensor [N, 5, 2], got {got}")
    if landmarks.dim() != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must have shape [N, 5, 2] (5 points per face), got {tuple(landmarks.shape)}")


def _check_model(model: Tensor | None) -> Tensor:
    if model is None:
        return mean_face_3d()
    if not isinstance(model, Tensor) or model.shape != (5, 3) or not model.is_floating_point():
        got = tuple(model.shape) if isinstance(model, Tensor) else type(model).__name__
        raise ValueError(f"model must be a floating-point tensor [5, 3] of 3D landmark positions, got {got}")
    centred = model.double() - model.double().mean(0)
    if int(torch.linalg.matrix_rank(centred)) < 3:
        raise ValueError("model must not be planar: the 3D points must span a volume (e.g. the nose in front)")
    return model.double()


@export("ops.euler_from_rotation")
def euler_from_rotation(rotations: Tensor) -> Tensor:
    """``[N, 3]`` (yaw, pitch, roll) of rotations ``[N, 3, 3]`` ``R = Rz(roll) Ry(yaw) Rx(pitch)``
    (module docstring), yaw in ``[-pi/2, pi/2]``, pitch and roll in ``(-pi, pi]``."""
    r = rotations
    yaw = torch.atan2(-r[..., 2, 0], torch.hypot(r[..., 2, 1], r[..., 2, 2]))
    pitch = torch.atan2(-r[..., 2, 1], r[..., 2, 2])
    roll = torch.atan2(r[..., 1, 0], r[..., 0, 0])
    return torch.stack([yaw, pitch, roll], dim=-1)


@export("ops.rotation_from_euler")
def rotation_from_euler(angles: Tensor) -> Tensor:
    """``[..., 3, 3]`` rotations ``Rz(roll) Ry(yaw) Rx(pitch)`` of angles ``[..., 3]`` (yaw, pitch,
    roll), the inverse of :func:`euler_from_rotation`."""
    yaw, pitch, roll = angles.unbind(-1)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    # Positive pitch moves the nose (z > 0) down (y grows): y' = cos p y + sin p z.
    rx = torch.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def _weak_perspective(landmarks: Tensor, model: Tensor) -> Tensor:
    """``[N, 3, 3]`` rotations of the scaled orthographic fit (module docstring); NaN where the
    landmarks of a face coincide."""
    centred_model = model - model.mean(0)
    centred = landmarks - landmarks.mean(1, keepdim=True)
    affine = (torch.linalg.pinv(centred_model) @ centred).transpose(1, 2)  # [N, 2, 3]
    u, singular, vh = torch.linalg.svd(affine, full_matrices=False)
    rows = u @ vh
    rotation = torch.cat([rows, torch.linalg.cross(rows[:, 0], rows[:, 1])[:, None]], dim=1)
    flat = singular[:, 0] <= 1e-9 * (1 + centred.abs().amax((1, 2)))
    return torch.where(flat[:, None, None], torch.full_like(rotation, math.nan), rotation)


def _camera_matrix(image_size: tuple[int, int] | None, camera: Tensor | None) -> np.ndarray:
    if camera is not None:
        if not isinstance(camera, Tensor) or camera.shape != (3, 3):
            got = tuple(camera.shape) if isinstance(camera, Tensor) else type(camera).__name__
            raise ValueError(f"camera must be a [3, 3] intrinsic matrix tensor, got {got}")
        return camera.detach().double().cpu().numpy()
    if image_size is None or len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (height, width) with positive sides, got {image_size!r}")
    height, width = image_size
    focal = float(max(height, width))  # a common guess for an unknown lens: a field of view of about 53 degrees
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def _perspective(landmarks: Tensor, model: Tensor, intrinsics: np.ndarray) -> Tensor:
    """``[N, 3, 3]`` rotations from ``cv2.solvePnP`` (SQPnP), one face at a time."""
    import cv2

    # OpenCV's camera looks along +z; our face frame has z towards the camera: flip z on the way in
    # and conjugate the rotation by the same flip on the way out (R = F R_cv F).
    flip = np.diag([1.0, 1.0, -1.0])
    object_points = (model.cpu().numpy() @ flip).reshape(5, 1, 3)
    rotations = []
    for points in landmarks.cpu().numpy():
        ok, rvec, _ = cv2.solvePnP(object_points, points.reshape(5, 1, 2), intrinsics, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok or not np.isfinite(points).all():
            rotations.append(np.full((3, 3), np.nan))
            continue
        rotations.append(flip @ cv2.Rodrigues(rvec)[0] @ flip)
    return torch.from_numpy(np.stack(rotations)) if rotations else landmarks.new_zeros(0, 3, 3)


@export("ops.head_pose")
def head_pose(
    landmarks: Tensor,
    image_size: tuple[int, int] | None = None,
    camera: Tensor | None = None,
    model: Tensor | None = None,
) -> Tensor:
    """Yaw, pitch and roll of each face from its 5 landmarks (module docstring for the angles).

    Args:
        landmarks: ``[N, 5, 2]`` (x, y) pixels in ArcFace's order (left eye, right eye as seen in
            the image, nose tip, left and right mouth corner), continuous pixel convention.
        image_size: ``(height, width)`` of the image: solve under a pinhole camera with focal
            length ``max(height, width)`` and the principal point at the image centre.
        camera: ``[3, 3]`` intrinsic matrix instead (takes precedence over ``image_size``).
            With neither, the closed-form weak-perspective fit.
        model: ``[5, 3]`` 3D landmark positions (x right, y down, z towards the camera, any
            scale), default :func:`mean_face_3d`.

    Returns:
        ``[N, 3]`` (yaw, pitch, roll) in radians, float32 (float64 for float64 landmarks); NaN for
        a face whose landmarks coincide.

    Example:
        >>> points = torch.tensor([[[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]]])
        >>> head_pose(points).abs().max() < 0.05
        tensor(True)
    """
    _check_landmarks(landmarks)
    reference = _check_model(model)
    points = landmarks.detach().double().cpu()
    if camera is None and image_size is None:
        rotations = _weak_perspective(points, reference)
    else:
        rotations = _perspective(points, reference, _camera_matrix(image_size, camera))
    out_dtype = torch.float64 if landmarks.dtype == torch.float64 else torch.float32
    return euler_from_rotation(rotations).to(device=landmarks.device, dtype=out_dtype)
