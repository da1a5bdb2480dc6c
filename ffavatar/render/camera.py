"""Pinhole cameras (OpenCV convention) and their exact conversion to and from Blender cameras.

Conventions
-----------
* Our world (FLAME's): meters, +Y up, the face looks along +Z, +X is the subject's left.
* Camera frame: OpenCV, x right, y down, z forward. ``viewmat`` maps world to camera (4x4).
* ``K`` is in pixels with continuous pixel coordinates: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``,
  so its center is ``(i + 0.5, j + 0.5)`` and a centered principal point is ``(W/2, H/2)``
  (gsplat's convention, and Blender's view-plane convention).
* Blender world: +Z up. :func:`world_to_blender` rotates our world +90 degrees about X: our +Y (up)
  -> Blender +Z and our +Z (face direction) -> Blender -Y, so the face looks toward Blender's front
  view; +X stays +X. The add-on must place the FLAME head with this same mapping.
* Blender camera object frame: looks down its local -Z with +Y up, so
  ``OpenCV camera frame = Blender camera frame with Y and Z negated``.
* Blender intrinsics follow ``BKE_camera_params_compute_viewplane`` (pixel aspect 1): the fitted
  axis is horizontal for HORIZONTAL, vertical for VERTICAL, and for AUTO whichever of width/height
  is larger (width on ties); the sensor size is ``sensor_height`` for VERTICAL, else ``sensor_width``
  (also for AUTO with a portrait image). With ``S`` the fitted image size in pixels:
  ``f = lens * S / sensor``, ``cx = W/2 - shift_x * S``, ``cy = H/2 + shift_y * S`` (shift_y moves
  the view up, image y points down). Render size is ``resolution * percentage // 100``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ffavatar.errors import InvalidInput, LimitExceeded

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
MAX_RENDER_SIZE = 4096
"""Largest rendered image side in pixels, for every render path (API, CLI, backend, Blender cameras)."""

# OpenCV camera axes expressed in Blender camera axes (and back: it is its own inverse).
_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


def world_to_blender(dtype: torch.dtype = torch.float64, device: Any = None) -> Tensor:
    """4x4 rigid transform from our Y-up world to Blender's Z-up world: (x, y, z) -> (x, -z, y)."""
    return torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=dtype, device=device,
    )


def _rigid_inverse(m: Tensor) -> Tensor:
    """Inverse of (..., 4, 4) rigid transforms with orthonormal rotation blocks."""
    r_t = m[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = r_t
    out[..., :3, 3] = -(r_t @ m[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def _as_tensor(x: Any, dtype: torch.dtype, device: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype=dtype, device=device if device is not None else x.device)
    return torch.as_tensor(x, dtype=dtype, device=device)


@dataclass
class BlenderCameraParams:
    """A Blender perspective camera as plain values (what the add-on reads from bpy per frame).

    ``matrix_world`` is the camera object's ``matrix_world`` (4x4, Blender world, row-major nested
    lists; object scale is ignored as Blender does). Lens and sensor sizes in mm. Pixel aspect is 1.
    """

    matrix_world: list[list[float]]
    lens: float
    resolution_x: int
    resolution_y: int
    sensor_width: float = 36.0
    sensor_height: float = 24.0
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0
    shift_y: float = 0.0
    resolution_percentage: int = 100

    def __post_init__(self) -> None:
        m = self.matrix_world
        if len(m) != 4 or any(len(row) != 4 for row in m):
            raise InvalidInput("BlenderCameraParams.matrix_world must be 4x4 nested lists")
        self.matrix_world = [[float(v) for v in row] for row in m]
        if not all(math.isfinite(v) for row in self.matrix_world for v in row):
            raise InvalidInput("BlenderCameraParams.matrix_world has non-finite values")
        if self.sensor_fit not in SENSOR_FITS:
            raise InvalidInput(f"sensor_fit must be one of {SENSOR_FITS}, got {self.sensor_fit!r}")
        for name in ("lens", "sensor_width", "sensor_height"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise InvalidInput(f"BlenderCameraParams.{name} must be a positive number, got {value}")
            setattr(self, name, value)
        for name in ("shift_x", "shift_y"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise InvalidInput(f"BlenderCameraParams.{name} must be finite, got {value}")
            setattr(self, name, value)
        for name in ("resolution_x", "resolution_y", "resolution_percentage"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise InvalidInput(f"BlenderCameraParams.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))
        if self.width <= 0 or self.height <= 0:
            raise InvalidInput(
                f"render size {self.width}x{self.height} is empty at {self.resolution_percentage}%"
            )
        if self.width > MAX_RENDER_SIZE or self.height > MAX_RENDER_SIZE:
            raise LimitExceeded(
                f"the camera renders {self.width}x{self.height} pixels ({self.resolution_x}x{self.resolution_y} at "
                f"{self.resolution_percentage}%); the limit is {MAX_RENDER_SIZE}x{MAX_RENDER_SIZE}"
            )

    @property
    def width(self) -> int:
        """Rendered width in pixels, after resolution_percentage (integer division as Blender)."""
        return self.resolution_x * self.resolution_percentage // 100

    @property
    def height(self) -> int:
        return self.resolution_y * self.resolution_percentage // 100

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of floats, ints, strings and lists (msgpack-friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlenderCameraParams:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise :class:`InvalidInput`."""
        if not isinstance(d, dict):
            raise InvalidInput(f"a Blender camera must be a dict, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidInput(f"unknown Blender camera keys {unknown}; known keys: {sorted(known)}")
        missing = [k for k in ("matrix_world", "lens", "resolution_x", "resolution_y") if k not in d]
        if missing:
            raise InvalidInput(f"Blender camera dict lacks {missing}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"invalid Blender camera dict: {e}") from None


def _fit(sensor_fit: str, width: int, height: int) -> tuple[str, int]:
    """Blender's effective fit ('HORIZONTAL'|'VERTICAL') and the fitted image size in pixels."""
    if sensor_fit == "AUTO":
        sensor_fit = "HORIZONTAL" if width >= height else "VERTICAL"
    return sensor_fit, (width if sensor_fit == "HORIZONTAL" else height)


@dataclass(eq=False)
class Camera:
    """A batch of C pinhole cameras sharing one image size.

    Attributes:
        K: (C, 3, 3) intrinsics in pixels.
        viewmat: (C, 4, 4) world-to-camera, OpenCV axes.
        width, height: image size in pixels.
    A single (3, 3) K / (4, 4) viewmat is promoted to C = 1.
    """

    K: Tensor
    viewmat: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if not isinstance(self.K, Tensor) or not isinstance(self.viewmat, Tensor):
            raise InvalidInput("Camera.K and Camera.viewmat must be torch tensors")
        if self.K.ndim == 2:
            self.K = self.K[None]
        if self.viewmat.ndim == 2:
            self.viewmat = self.viewmat[None]
        if self.K.ndim != 3 or self.K.shape[1:] != (3, 3):
            raise InvalidInput(f"Camera.K must be (C, 3, 3), got {tuple(self.K.shape)}")
        if self.viewmat.ndim != 3 or self.viewmat.shape[1:] != (4, 4):
            raise InvalidInput(f"Camera.viewmat must be (C, 4, 4), got {tuple(self.viewmat.shape)}")
        if self.K.shape[0] != self.viewmat.shape[0]:
            raise InvalidInput(f"Camera has {self.K.shape[0]} K but {self.viewmat.shape[0]} viewmats")
        if not self.K.is_floating_point() or self.K.dtype != self.viewmat.dtype:
            raise InvalidInput(f"Camera.K ({self.K.dtype}) and viewmat ({self.viewmat.dtype}) must share "
                               "one floating dtype")
        if self.K.device != self.viewmat.device:
            raise InvalidInput(f"Camera.K is on {self.K.device} but viewmat on {self.viewmat.device}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise InvalidInput(f"Camera.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return self.K.shape[0]

    @property
    def num_cameras(self) -> int:
        return self.K.shape[0]

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    @property
    def position(self) -> Tensor:
        """(C, 3) camera centers in world coordinates."""
        r, t = self.viewmat[:, :3, :3], self.viewmat[:, :3, 3:4]
        return -(r.transpose(1, 2) @ t)[..., 0]

    @property
    def cam_to_world(self) -> Tensor:
        """(C, 4, 4) camera-to-world (inverse of viewmat)."""
        return _rigid_inverse(self.viewmat)

    @property
    def fov_x(self) -> Tensor:
        """(C,) horizontal field of view in radians (for a centered principal point)."""
        return 2 * torch.atan(self.width / (2 * self.K[:, 0, 0]))

    @property
    def fov_y(self) -> Tensor:
        """(C,) vertical field of view in radians (for a centered principal point)."""
        return 2 * torch.atan(self.height / (2 * self.K[:, 1, 1]))

    def __repr__(self) -> str:
        return (f"Camera(num_cameras={len(self)}, width={self.width}, height={self.height}, "
                f"dtype={self.dtype}, device={self.device})")

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def intrinsics(focal: Any, width: int, height: int, count: int = 1, *,
                   dtype: torch.dtype = torch.float32, device: Any = None) -> Tensor:
        """(C, 3, 3) K with fx = fy = focal (scalar or (C,)) and a centered principal point."""
        f = _as_tensor(focal, dtype, device).reshape(-1)
        f = f.expand(count) if f.numel() == 1 else f
        k = torch.zeros(f.shape[0], 3, 3, dtype=dtype, device=f.device)
        k[:, 0, 0] = f
        k[:, 1, 1] = f
        k[:, 0, 2] = width / 2
        k[:, 1, 2] = height / 2
        k[:, 2, 2] = 1.0
        return k

    @classmethod
    def look_at(
        cls,
        eye: Any,
        target: Any = (0.0, 0.0, 0.0),
        up: Any = (0.0, 1.0, 0.0),
        *,
        fov_deg: float | None = None,
        focal: Any = None,
        width: int,
        height: int,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Camera:
        """Cameras at ``eye`` (3,) or (C, 3) looking at ``target`` with world ``up`` up in the image.

        Give exactly one of ``fov_deg`` (vertical field of view, degrees) or ``focal`` (pixels,
        scalar or (C,)). The principal point is the image center.
        """
        if (fov_deg is None) == (focal is None):
            raise InvalidInput("Camera.look_at needs exactly one of fov_deg or focal")
        eye = _as_tensor(eye, dtype, device)
        dev = eye.device
        target = _as_tensor(target, dtype, dev)
        up = _as_tensor(up, dtype, dev)
        eye, target, up = torch.broadcast_tensors(eye.reshape(-1, 3), target.reshape(-1, 3),
                                                  up.reshape(-1, 3))
        forward = target - eye
        dist = forward.norm(dim=-1)
        if bool((dist < 1e-12).any()):
            raise InvalidInput("Camera.look_at: eye and target coincide")
        z = forward / dist[:, None]
        right = torch.cross(-up, z, dim=-1)  # OpenCV y points down, so -up plays "y"
        if bool((right.norm(dim=-1) < 1e-9 * up.norm(dim=-1).clamp_min(1e-30)).any()):
            raise InvalidInput("Camera.look_at: viewing direction is parallel to up",
                               hint="pick another up vector")
        x = F.normalize(right, dim=-1)
        y = torch.cross(z, x, dim=-1)
        rot = torch.stack([x, y, z], dim=1)  # rows are the camera axes in world coords
        viewmat = torch.zeros(eye.shape[0], 4, 4, dtype=dtype, device=dev)
        viewmat[:, :3, :3] = rot
        viewmat[:, :3, 3] = -(rot @ eye[..., None])[..., 0]
        viewmat[:, 3, 3] = 1.0
        if focal is None:
            focal = height / (2.0 * math.tan(math.radians(fov_deg) / 2))
        K = cls.intrinsics(focal, width, height, eye.shape[0], dtype=dtype, device=dev)
        if K.shape[0] != viewmat.shape[0]:
            if viewmat.shape[0] == 1:
                viewmat = viewmat.expand(K.shape[0], 4, 4).clone()
            else:
                raise InvalidInput(f"{K.shape[0]} focals for {viewmat.shape[0]} cameras")
        return cls(K=K, viewmat=viewmat, width=width, height=height)

    @classmethod
    def from_spherical(
        cls,
        yaw: Any,
        pitch: Any,
        radius: Any,
        target: Any = (0.0, 0.0, 0.0),
        *,
        degrees: bool = True,
        fov_deg: float | None = None,
        focal: Any = None,
        width: int,
        height: int,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Camera:
        """Cameras on a sphere around ``target`` looking at it, world +Y up in the image.

        yaw, pitch, radius: scalars or (C,). yaw = 0, pitch = 0 puts the camera on +Z (in front of
        the face); yaw turns about +Y toward +X; pitch > 0 raises the camera.
        """
        yaw, pitch, radius = (_as_tensor(v, dtype, device).reshape(-1) for v in (yaw, pitch, radius))
        yaw, pitch, radius = torch.broadcast_tensors(yaw, pitch, radius)
        if degrees:
            yaw, pitch = torch.deg2rad(yaw), torch.deg2rad(pitch)
        offset = torch.stack(
            [torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch), torch.cos(pitch) * torch.cos(yaw)],
            dim=-1,
        ) * radius[:, None]
        target = _as_tensor(target, dtype, offset.device).reshape(-1, 3)
        return cls.look_at(target + offset, target, fov_deg=fov_deg, focal=focal, width=width,
                           height=height, dtype=dtype, device=offset.device)

    @classmethod
    def orbit(
        cls,
        n: int,
        radius: float,
        elevation_deg: float = 0.0,
        target: Any = (0.0, 0.0, 0.0),
        *,
        fov_deg: float | None = None,
        focal: Any = None,
        width: int,
        height: int,
        start_azimuth_deg: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Camera:
        """n cameras on a turntable about +Y, evenly spaced from ``start_azimuth_deg`` (0 = front)."""
        if n < 1:
            raise InvalidInput(f"Camera.orbit needs n >= 1, got {n}")
        yaw = start_azimuth_deg + 360.0 * torch.arange(n, dtype=torch.float64) / n
        return cls.from_spherical(yaw, elevation_deg, radius, target, fov_deg=fov_deg, focal=focal,
                                  width=width, height=height, dtype=dtype, device=device)

    # ------------------------------------------------------------------ batch plumbing
    def __getitem__(self, index: Any) -> Camera:
        """Select cameras; an integer keeps the batch dim (C = 1)."""
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise InvalidInput(f"camera index {index} out of range for {len(self)} cameras")
            index = slice(index, index + 1 if index != -1 else None)
        return Camera(self.K[index], self.viewmat[index], self.width, self.height)

    @staticmethod
    def cat(cameras: Sequence[Camera]) -> Camera:
        """Concatenate batches of cameras with the same image size."""
        if not cameras:
            raise InvalidInput("Camera.cat needs at least one camera")
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise InvalidInput(f"Camera.cat needs one image size, got {sorted(sizes)}",
                               hint="use .scaled() to bring them to one size")
        return Camera(torch.cat([c.K for c in cameras]), torch.cat([c.viewmat for c in cameras]),
                      cameras[0].width, cameras[0].height)

    def to(self, *args, **kwargs) -> Camera:
        """Like ``Tensor.to`` (device and/or dtype) on K and viewmat."""
        return Camera(self.K.to(*args, **kwargs), self.viewmat.to(*args, **kwargs), self.width,
                      self.height)

    def scaled(self, factor: float) -> Camera:
        """Same cameras for an image resized by ``factor`` (sizes rounded; K scaled per axis)."""
        w, h = round(self.width * factor), round(self.height * factor)
        if w < 1 or h < 1:
            raise InvalidInput(f"scaling {self.width}x{self.height} by {factor} leaves no pixels")
        s = torch.tensor([w / self.width, h / self.height, 1.0], dtype=self.dtype, device=self.device)
        return Camera(self.K * s[None, :, None], self.viewmat, w, h)

    # ------------------------------------------------------------------ geometry
    def world_to_camera(self, points: Tensor) -> Tensor:
        """points (N, 3) or (C, N, 3) in world -> (C, N, 3) in OpenCV camera coordinates."""
        r, t = self.viewmat[:, :3, :3], self.viewmat[:, :3, 3]
        return points @ r.transpose(-1, -2) + t[:, None, :]

    def project(self, points: Tensor) -> Tensor:
        """points (N, 3) or (C, N, 3) in world -> (C, N, 2) pixel coordinates (continuous)."""
        cam = self.world_to_camera(points)
        uvw = cam @ self.K.transpose(-1, -2)
        return uvw[..., :2] / uvw[..., 2:3]

    # ------------------------------------------------------------------ serialization
    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Plain dict of tensors (safetensors-ready); image size as int64 ``[width, height]``."""
        return {prefix + "K": self.K.contiguous(), prefix + "viewmat": self.viewmat.contiguous(),
                prefix + "image_size": torch.tensor([self.width, self.height], dtype=torch.int64)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], prefix: str = "") -> Camera:
        missing = [prefix + k for k in ("K", "viewmat", "image_size") if prefix + k not in state]
        if missing:
            raise InvalidInput(f"Camera state is missing {missing}")
        w, h = (int(v) for v in state[prefix + "image_size"].tolist())
        return cls(state[prefix + "K"], state[prefix + "viewmat"], w, h)

    # ------------------------------------------------------------------ Blender
    def to_blender(self, i: int = 0, *, sensor_width: float = 36.0, sensor_height: float = 24.0,
                   sensor_fit: str = "AUTO") -> BlenderCameraParams:
        """Camera ``i`` as Blender camera settings with the given sensor (exact inverse of
        :meth:`from_blender`). Needs square pixels (fx == fy) and no skew."""
        if sensor_fit not in SENSOR_FITS:
            raise InvalidInput(f"sensor_fit must be one of {SENSOR_FITS}, got {sensor_fit!r}")
        k = self.K[i].detach().to("cpu", torch.float64)
        fx, fy, cx, cy, skew = (float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]),
                                float(k[0, 1]))
        if abs(fx - fy) > 1e-4 * abs(fx) or abs(skew) > 1e-6 * abs(fx) or float(k[1, 0]) != 0.0:
            raise InvalidInput(
                f"Blender cameras have square pixels and no skew; camera {i} has fx={fx}, fy={fy}, "
                f"skew={skew}")
        fit, size = _fit(sensor_fit, self.width, self.height)
        focal = fx if fit == "HORIZONTAL" else fy
        sensor = sensor_height if sensor_fit == "VERTICAL" else sensor_width
        c2w = _rigid_inverse(self.viewmat[i].detach().to("cpu", torch.float64))
        flip = torch.diag(torch.tensor(_FLIP_YZ, dtype=torch.float64))
        matrix_world = world_to_blender() @ c2w @ flip
        return BlenderCameraParams(
            matrix_world=matrix_world.tolist(),
            lens=focal * sensor / size,
            resolution_x=self.width,
            resolution_y=self.height,
            sensor_width=sensor_width,
            sensor_height=sensor_height,
            sensor_fit=sensor_fit,
            shift_x=(self.width / 2 - cx) / size,
            shift_y=(cy - self.height / 2) / size,
            resolution_percentage=100,
        )

    @classmethod
    def from_blender(cls, params: BlenderCameraParams | dict[str, Any], *,
                     dtype: torch.dtype = torch.float32, device: Any = None) -> Camera:
        """One camera (C = 1) from Blender camera settings (a :class:`BlenderCameraParams` or its
        dict). Computed in float64, then cast to ``dtype``."""
        if isinstance(params, dict):
            params = BlenderCameraParams.from_dict(params)
        w, h = params.width, params.height
        fit, size = _fit(params.sensor_fit, w, h)
        sensor = params.sensor_height if params.sensor_fit == "VERTICAL" else params.sensor_width
        focal = params.lens * size / sensor
        k = torch.tensor([[focal, 0.0, w / 2 - params.shift_x * size],
                          [0.0, focal, h / 2 + params.shift_y * size],
                          [0.0, 0.0, 1.0]], dtype=torch.float64)
        m = torch.tensor(params.matrix_world, dtype=torch.float64)
        norms = m[:3, :3].norm(dim=0)
        if bool((norms < 1e-12).any()):
            raise InvalidInput("Blender camera matrix_world has a zero scale axis")
        m[:3, :3] = m[:3, :3] / norms  # Blender normalizes the camera object matrix
        flip = torch.diag(torch.tensor(_FLIP_YZ, dtype=torch.float64))
        c2w = _rigid_inverse(world_to_blender()) @ m @ flip
        viewmat = _rigid_inverse(c2w)
        return cls(K=k.to(dtype=dtype, device=device), viewmat=viewmat.to(dtype=dtype, device=device),
                   width=w, height=h)


__all__ = ["BlenderCameraParams", "Camera", "SENSOR_FITS", "world_to_blender"]
