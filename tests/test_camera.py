"""Camera: look-at/orbit conventions, projection, batching, and exact Blender conversion."""

import math

import numpy as np
import pytest
import torch

from ffavatar.errors import InvalidInput
from ffavatar.render.camera import SENSOR_FITS, BlenderCameraParams, Camera, world_to_blender

D = torch.float64


def _rot_x(deg):
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _blender_matrix(rot3, loc):
    m = np.eye(4)
    m[:3, :3] = rot3
    m[:3, 3] = loc
    return m.tolist()


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)  # proper rotation


def _blender_project(params: BlenderCameraParams, point_b: np.ndarray) -> np.ndarray:
    """Pixel (x right, y down) of a Blender-world point, following BKE_camera_params_compute_viewplane
    (pixel aspect 1, zoom 1, no offset) on its own: view-plane rectangle at clip_start, shifted."""
    m = np.array(params.matrix_world)
    m[:3, :3] /= np.linalg.norm(m[:3, :3], axis=0)
    local = np.linalg.inv(m) @ np.append(point_b, 1.0)
    w, h = params.width, params.height
    fit = params.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if w >= h else "VERTICAL"
    sensor = params.sensor_height if params.sensor_fit == "VERTICAL" else params.sensor_width
    viewfac = w if fit == "HORIZONTAL" else h
    clip = 0.1
    pixsize = sensor * clip / params.lens / viewfac
    xmin = (-0.5 * w + params.shift_x * viewfac) * pixsize
    ymin = (-0.5 * h + params.shift_y * viewfac) * pixsize
    x_near = local[0] * clip / -local[2]
    y_near = local[1] * clip / -local[2]
    return np.array([(x_near - xmin) / pixsize, h - (y_near - ymin) / pixsize])


# ----------------------------------------------------------------------------- look-at and friends
def test_look_at_front_camera_sees_upright_face():
    cam = Camera.look_at((0.0, 0.0, 0.6), (0.0, 0.0, 0.0), focal=100.0, width=64, height=48, dtype=D)
    expected = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0.6], [0, 0, 0, 1]], dtype=D)
    torch.testing.assert_close(cam.viewmat[0], expected, rtol=0, atol=1e-15)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.06, 0.0], [0.06, 0.0, 0.0]], dtype=D)
    uv = cam.project(pts)[0]
    # center -> principal point; +Y (top of head) -> up in the image; +X -> right (10 px at 0.6 m)
    torch.testing.assert_close(uv, torch.tensor([[32.0, 24.0], [32.0, 14.0], [42.0, 24.0]], dtype=D))
    torch.testing.assert_close(cam.position, torch.tensor([[0.0, 0.0, 0.6]], dtype=D))


def test_project_known_point_with_offcenter_principal_point():
    k = torch.tensor([[200.0, 0, 30.0], [0, 180.0, 20.0], [0, 0, 1]], dtype=D)
    cam = Camera(K=k, viewmat=torch.eye(4, dtype=D), width=64, height=48)
    uv = cam.project(torch.tensor([[0.1, -0.2, 2.0]], dtype=D))
    torch.testing.assert_close(uv, torch.tensor([[[30 + 200 * 0.05, 20 - 180 * 0.1]]], dtype=D))
    assert cam.K.shape == (1, 3, 3) and len(cam) == 1


def test_fov_and_focal():
    cam = Camera.look_at((0, 0, 1), fov_deg=40.0, width=100, height=50, dtype=D)
    assert math.degrees(cam.fov_y.item()) == pytest.approx(40.0, abs=1e-12)
    assert cam.K[0, 1, 1].item() == pytest.approx(25 / math.tan(math.radians(20)), rel=1e-14)
    assert cam.fov_x.item() == pytest.approx(2 * math.atan(50 / cam.K[0, 0, 0].item()), rel=1e-14)
    with pytest.raises(InvalidInput, match="exactly one"):
        Camera.look_at((0, 0, 1), width=8, height=8)
    with pytest.raises(InvalidInput, match="parallel"):
        Camera.look_at((0, 2, 0), focal=10.0, width=8, height=8)


def test_orbit_turntable():
    cams = Camera.orbit(8, radius=1.5, elevation_deg=20.0, target=(0.0, 0.1, 0.0), focal=50.0,
                        width=32, height=32, dtype=D)
    pos = cams.position
    assert pos.shape == (8, 3)
    rel = pos - torch.tensor([0.0, 0.1, 0.0], dtype=D)
    torch.testing.assert_close(rel.norm(dim=-1), torch.full((8,), 1.5, dtype=D))
    torch.testing.assert_close(rel[:, 1], torch.full((8,), 1.5 * math.sin(math.radians(20)), dtype=D))
    # azimuth 0 is in front (+Z), azimuth 90 is on +X
    assert rel[0, 2] > 1.0 and abs(rel[0, 0]) < 1e-12
    assert rel[2, 0] > 1.0 and abs(rel[2, 2]) < 1e-12
    # every camera centers the target and keeps world +Y up in the image
    uv = cams.project(torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.2, 0.0]], dtype=D))
    torch.testing.assert_close(uv[:, 0], torch.full((8, 2), 16.0, dtype=D))
    assert bool((uv[:, 1, 1] < 16.0).all())
    torch.testing.assert_close(uv[:, 1, 0], torch.full((8,), 16.0, dtype=D))


def test_from_spherical_matches_look_at():
    cam = Camera.from_spherical(30.0, -10.0, 2.0, focal=80.0, width=40, height=30, dtype=D)
    a, b = math.radians(30), math.radians(-10)
    eye = (2 * math.cos(b) * math.sin(a), 2 * math.sin(b), 2 * math.cos(b) * math.cos(a))
    ref = Camera.look_at(eye, focal=80.0, width=40, height=30, dtype=D)
    torch.testing.assert_close(cam.viewmat, ref.viewmat)
    rad = Camera.from_spherical(a, b, 2.0, degrees=False, focal=80.0, width=40, height=30, dtype=D)
    torch.testing.assert_close(rad.viewmat, ref.viewmat)


def test_batching_scaling_and_state_dict():
    cams = Camera.orbit(4, 1.0, focal=torch.tensor([10.0, 20.0, 30.0, 40.0]), width=20, height=10)
    assert cams.K[:, 0, 0].tolist() == [10.0, 20.0, 30.0, 40.0]
    one = cams[2]
    assert len(one) == 1 and torch.equal(one.K[0], cams.K[2]) and len(cams[-1]) == 1
    both = Camera.cat([cams[1:3], cams[0]])
    assert len(both) == 3 and torch.equal(both.viewmat[2], cams.viewmat[0])
    with pytest.raises(InvalidInput, match="one image size"):
        Camera.cat([cams, cams.scaled(2.0)])
    half = cams.scaled(0.5)
    assert (half.width, half.height) == (10, 5)
    pts = torch.tensor([[0.1, 0.05, -0.1], [0.0, 0.0, 0.2]])
    torch.testing.assert_close(half.project(pts), cams.project(pts) * 0.5)
    state = cams.state_dict(prefix="cam.")
    back = Camera.from_state_dict(state, prefix="cam.")
    assert torch.equal(back.K, cams.K) and torch.equal(back.viewmat, cams.viewmat)
    assert (back.width, back.height) == (20, 10)
    assert cams.to(D).dtype == D
    with pytest.raises(InvalidInput, match="positive integer"):
        Camera(cams.K, cams.viewmat, 0, 10)
    with pytest.raises(InvalidInput, match=r"\(C, 3, 3\)"):
        Camera(torch.eye(4), torch.eye(4), 8, 8)


# ----------------------------------------------------------------------------- Blender
def test_world_to_blender_axes():
    m = world_to_blender()
    up, face, left = (m[:3, :3] @ torch.tensor(v, dtype=D) for v in ([0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]))
    assert up.tolist() == [0, 0, 1] and face.tolist() == [0, -1, 0] and left.tolist() == [1, 0, 0]
    assert torch.linalg.det(m).item() == 1.0


def test_blender_hand_computed_intrinsics():
    base = dict(matrix_world=np.eye(4).tolist(), lens=50.0, sensor_width=36.0, sensor_height=24.0)
    k = Camera.from_blender(BlenderCameraParams(resolution_x=1920, resolution_y=1080, **base), dtype=D).K[0]
    assert k[0, 0].item() == pytest.approx(50 / 36 * 1920, rel=1e-15)
    assert k[1, 1].item() == pytest.approx(50 / 36 * 1920, rel=1e-15)
    assert (k[0, 2].item(), k[1, 2].item()) == (960.0, 540.0)
    # shifts are in units of the fitted (larger) dimension; +x moves the view right, +y up
    shifted = BlenderCameraParams(resolution_x=1920, resolution_y=1080, shift_x=0.1, shift_y=0.1, **base)
    k = Camera.from_blender(shifted, dtype=D).K[0]
    assert k[0, 2].item() == pytest.approx(960 - 192, abs=1e-9)
    assert k[1, 2].item() == pytest.approx(540 + 192, abs=1e-9)
    # AUTO portrait: sensor_width maps to the height
    k = Camera.from_blender(BlenderCameraParams(resolution_x=1080, resolution_y=1920, **base), dtype=D).K[0]
    assert k[0, 0].item() == pytest.approx(50 / 36 * 1920, rel=1e-15)
    # VERTICAL: sensor_height maps to the height; HORIZONTAL: sensor_width to the width
    p = BlenderCameraParams(resolution_x=1920, resolution_y=1080, sensor_fit="VERTICAL", **base)
    assert Camera.from_blender(p, dtype=D).K[0, 0, 0].item() == pytest.approx(50 / 24 * 1080, rel=1e-15)
    p = BlenderCameraParams(resolution_x=1080, resolution_y=1920, sensor_fit="HORIZONTAL", shift_y=0.5,
                            **base)
    k = Camera.from_blender(p, dtype=D).K[0]
    assert k[0, 0].item() == pytest.approx(50 / 36 * 1080, rel=1e-15)
    assert k[1, 2].item() == pytest.approx(960 + 540, abs=1e-9)
    # resolution percentage halves the render size and the focal in pixels
    p = BlenderCameraParams(resolution_x=1920, resolution_y=1080, resolution_percentage=50, **base)
    cam = Camera.from_blender(p, dtype=D)
    assert (cam.width, cam.height) == (960, 540)
    assert cam.K[0, 0, 0].item() == pytest.approx(50 / 36 * 960, rel=1e-15)


def test_blender_front_camera_equals_opencv_look_at():
    # Blender: camera at (0, -1, 0) with rotation_euler (90 deg, 0, 0) looks at the origin.
    params = BlenderCameraParams(matrix_world=_blender_matrix(_rot_x(90), [0, -1, 0]), lens=50.0,
                                 resolution_x=640, resolution_y=480)
    cam = Camera.from_blender(params, dtype=D)
    ref = Camera.look_at((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), focal=50 / 36 * 640, width=640, height=480,
                         dtype=D)
    torch.testing.assert_close(cam.viewmat, ref.viewmat, rtol=0, atol=1e-12)
    torch.testing.assert_close(cam.K, ref.K, rtol=0, atol=1e-12)
    back = ref.to_blender()
    np.testing.assert_allclose(back.matrix_world, params.matrix_world, atol=1e-12)
    assert back.lens == pytest.approx(50.0, rel=1e-14)


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
@pytest.mark.parametrize("size", [(640, 360), (300, 500)])
def test_blender_projection_matches_blender_viewplane(fit, size):
    rng = np.random.default_rng([SENSOR_FITS.index(fit), *size])
    for _ in range(5):
        params = BlenderCameraParams(
            matrix_world=_blender_matrix(_random_rotation(rng), rng.normal(size=3)),
            lens=float(rng.uniform(20, 120)), resolution_x=size[0], resolution_y=size[1],
            sensor_width=float(rng.uniform(10, 40)), sensor_height=float(rng.uniform(10, 40)),
            sensor_fit=fit, shift_x=float(rng.uniform(-0.3, 0.3)), shift_y=float(rng.uniform(-0.3, 0.3)))
        cam = Camera.from_blender(params.to_dict(), dtype=D)
        m = np.array(params.matrix_world)
        # points in front of the Blender camera (its -Z), expressed in Blender world
        local = np.stack([rng.uniform(-1, 1, 6), rng.uniform(-1, 1, 6), -rng.uniform(1, 4, 6)], -1)
        pts_b = local @ m[:3, :3].T + m[:3, 3]
        pts_ours = torch.from_numpy(pts_b) @ world_to_blender()[:3, :3]  # inverse rotation
        uv = cam.project(pts_ours)[0].numpy()
        ref = np.stack([_blender_project(params, p) for p in pts_b])
        np.testing.assert_allclose(uv, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
def test_blender_round_trip_from_random_cameras(fit):
    rng = np.random.default_rng(7)
    for w, h in [(512, 384), (270, 480), (256, 256)]:
        for _ in range(4):
            f = rng.uniform(100, 1000)
            k = torch.tensor([[f, 0, rng.uniform(0, w)], [0, f, rng.uniform(0, h)], [0, 0, 1]], dtype=D)
            vm = torch.eye(4, dtype=D)
            vm[:3, :3] = torch.from_numpy(_random_rotation(rng))
            vm[:3, 3] = torch.from_numpy(rng.normal(size=3))
            cam = Camera(k, vm, w, h)
            params = cam.to_blender(sensor_width=float(rng.uniform(10, 40)),
                                    sensor_height=float(rng.uniform(10, 40)), sensor_fit=fit)
            wire = BlenderCameraParams.from_dict(params.to_dict())
            back = Camera.from_blender(wire, dtype=D)
            assert (back.width, back.height) == (w, h)
            torch.testing.assert_close(back.K, cam.K, rtol=0, atol=1e-9)
            torch.testing.assert_close(back.viewmat, cam.viewmat, rtol=0, atol=1e-9)


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
def test_blender_round_trip_from_random_params(fit):
    rng = np.random.default_rng(11)
    for w, h in [(1920, 1080), (720, 1280)]:
        for _ in range(4):
            params = BlenderCameraParams(
                matrix_world=_blender_matrix(_random_rotation(rng), rng.normal(size=3) * 3),
                lens=float(rng.uniform(15, 200)), resolution_x=w, resolution_y=h,
                sensor_width=float(rng.uniform(5, 50)), sensor_height=float(rng.uniform(5, 50)),
                sensor_fit=fit, shift_x=float(rng.uniform(-1, 1)), shift_y=float(rng.uniform(-1, 1)))
            back = Camera.from_blender(params, dtype=D).to_blender(
                sensor_width=params.sensor_width, sensor_height=params.sensor_height, sensor_fit=fit)
            np.testing.assert_allclose(back.matrix_world, params.matrix_world, rtol=0, atol=1e-9)
            for name in ("lens", "shift_x", "shift_y"):
                assert getattr(back, name) == pytest.approx(getattr(params, name), abs=1e-9)
            assert (back.resolution_x, back.resolution_y, back.sensor_fit) == (w, h, fit)


def test_blender_scaled_matrix_world_is_normalized():
    m = _blender_matrix(_rot_x(90) * 2.5, [0, -1, 0])
    params = BlenderCameraParams(matrix_world=m, lens=35.0, resolution_x=64, resolution_y=64)
    a = Camera.from_blender(params, dtype=D)
    b = Camera.look_at((0, 0, 1.0), focal=35 / 36 * 64, width=64, height=64, dtype=D)
    torch.testing.assert_close(a.viewmat, b.viewmat, rtol=0, atol=1e-12)


def test_blender_dict_is_plain_and_validated():
    msgpack = pytest.importorskip("msgpack")
    params = Camera.look_at((0.2, 0.1, 0.7), focal=300.0, width=320, height=240).to_blender()
    d = params.to_dict()
    again = BlenderCameraParams.from_dict(msgpack.unpackb(msgpack.packb(d)))
    assert again == params
    with pytest.raises(InvalidInput, match="unknown"):
        BlenderCameraParams.from_dict({**d, "lense": 50.0})
    with pytest.raises(InvalidInput, match="lacks"):
        BlenderCameraParams.from_dict({k: v for k, v in d.items() if k != "lens"})
    with pytest.raises(InvalidInput, match="sensor_fit"):
        BlenderCameraParams.from_dict({**d, "sensor_fit": "FILL"})
    with pytest.raises(InvalidInput, match="lens"):
        BlenderCameraParams.from_dict({**d, "lens": -1.0})
    with pytest.raises(InvalidInput, match="4x4"):
        BlenderCameraParams.from_dict({**d, "matrix_world": [[1, 0, 0]]})
    anisotropic = Camera(torch.tensor([[100.0, 0, 8], [0, 120.0, 8], [0, 0, 1]]), torch.eye(4), 16, 16)
    with pytest.raises(InvalidInput, match="square pixels"):
        anisotropic.to_blender()
