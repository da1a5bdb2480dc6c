"""Gaussians container and the standard 3DGS PLY format."""

import math
import struct

import numpy as np
import pytest
import torch

from ffavatar.errors import CheckpointError, InvalidInput, NotFound
from ffavatar.gaussians import SH_C0, Gaussians, rgb_to_sh_dc, sh_dc_to_rgb
from ffavatar.ply import read_ply, write_ply


def _random(n=10, degree=1, batch=(), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*batch, n, *s, generator=g, dtype=dtype)  # noqa: E731
    return Gaussians(means=r(3), quats=r(4), log_scales=r(3), opacity_logits=r(),
                     sh=r((degree + 1) ** 2, 3))


def _assert_same(a: Gaussians, b: Gaussians):
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# ----------------------------------------------------------------------------- container
def test_activations_and_sizes():
    g = _random(n=7, degree=2, batch=(2, 3))
    assert (g.num_points, g.sh_degree, tuple(g.batch_shape)) == (7, 2, (2, 3))
    torch.testing.assert_close(g.scales, g.log_scales.exp())
    torch.testing.assert_close(g.opacities, 1 / (1 + torch.exp(-g.opacity_logits)))
    torch.testing.assert_close(g.rotations.norm(dim=-1), torch.ones(2, 3, 7))
    torch.testing.assert_close(g.rotations * g.quats.norm(dim=-1, keepdim=True), g.quats)


def test_rgb_dc_conversion_constant():
    assert SH_C0 == 0.28209479177387814
    rgb = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    dc = rgb_to_sh_dc(rgb)
    torch.testing.assert_close(dc, torch.tensor([0.0, 0.5 / SH_C0, -0.5 / SH_C0], dtype=torch.float64))
    torch.testing.assert_close(sh_dc_to_rgb(dc), rgb)


def test_from_rgb_round_trips_activated_values():
    means = torch.randn(5, 3, dtype=torch.float64)
    rgb = torch.rand(5, 3, dtype=torch.float64)
    scales = torch.rand(5, 3, dtype=torch.float64) + 0.01
    opac = torch.rand(5, dtype=torch.float64) * 0.9 + 0.05
    g = Gaussians.from_rgb(means, rgb, scales, opac, sh_degree=3)
    assert g.sh.shape == (5, 16, 3) and torch.count_nonzero(g.sh[:, 1:]) == 0
    torch.testing.assert_close(g.rgb, rgb)
    torch.testing.assert_close(g.scales, scales)
    torch.testing.assert_close(g.opacities, opac)
    assert torch.equal(g.quats, torch.tensor([[1.0, 0, 0, 0]] * 5, dtype=torch.float64))
    with pytest.raises(InvalidInput, match="positive"):
        Gaussians.from_rgb(means, rgb, -scales, opac)


def test_validation_messages():
    g = _random(n=4)
    with pytest.raises(InvalidInput, match="quats"):
        Gaussians(g.means, g.quats[:, :3], g.log_scales, g.opacity_logits, g.sh)
    with pytest.raises(InvalidInput, match="opacity_logits"):
        Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits[:3], g.sh)
    with pytest.raises(InvalidInput, match="not \\(degree \\+ 1\\)\\*\\*2"):
        Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits, torch.zeros(4, 3, 3))
    with pytest.raises(InvalidInput, match="sh has shape"):
        Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits, torch.zeros(4, 4))
    with pytest.raises(InvalidInput, match="float64"):
        Gaussians(g.means.double(), g.quats, g.log_scales, g.opacity_logits, g.sh)
    with pytest.raises(InvalidInput, match="floating point"):
        Gaussians(g.means, g.quats.long(), g.log_scales, g.opacity_logits, g.sh)


def test_indexing_select_and_degree():
    g = _random(n=6, degree=1, batch=(3,))
    assert torch.equal(g[1].means, g.means[1]) and g[1].batch_shape == ()
    assert g[0:2].batch_shape == (2,)
    with pytest.raises(InvalidInput, match="select"):
        g[0, 1]
    with pytest.raises(InvalidInput, match="no batch dims"):
        g[0][0]
    mask = torch.tensor([True, False, True, False, False, True])
    s = g.select(mask)
    assert s.num_points == 3 and torch.equal(s.sh, g.sh[:, [0, 2, 5]])
    s = g.select([5, 0])
    assert torch.equal(s.opacity_logits, g.opacity_logits[:, [5, 0]])
    with pytest.raises(InvalidInput, match="mask has 2 entries"):
        g.select(torch.tensor([True, False]))
    up = g.with_sh_degree(3)
    assert up.sh.shape == (3, 6, 16, 3) and torch.equal(up.sh[..., :4, :], g.sh)
    assert torch.count_nonzero(up.sh[..., 4:, :]) == 0
    assert torch.equal(up.with_sh_degree(1).sh, g.sh)
    assert up.with_sh_degree(0).sh.shape == (3, 6, 1, 3)


def test_cat_stack_and_plumbing():
    a, b = _random(n=3, degree=0, seed=1), _random(n=5, degree=2, seed=2)
    c = Gaussians.cat([a, b])
    assert c.num_points == 8 and c.sh_degree == 2
    assert torch.equal(c.means[:3], a.means) and torch.equal(c.sh[3:], b.sh)
    assert torch.count_nonzero(c.sh[:3, 1:]) == 0
    s = Gaussians.stack([a, _random(n=3, degree=1, seed=3)])
    assert s.batch_shape == (2,) and s.sh_degree == 1 and torch.equal(s[0].means, a.means)
    with pytest.raises(InvalidInput, match="stack"):
        Gaussians.stack([a, b])
    with pytest.raises(InvalidInput, match="batch shapes"):
        Gaussians.cat([a, _random(n=3, batch=(2,))])
    d = a.to(torch.float64)
    assert d.dtype == torch.float64 and torch.equal(d.means.float(), a.means)
    cl = a.clone()
    cl.means.add_(1.0)
    assert not torch.equal(cl.means, a.means)
    leaf = a.means.clone().requires_grad_(True)
    g = Gaussians(leaf * 2, a.quats, a.log_scales, a.opacity_logits, a.sh)
    assert g.means.requires_grad and not g.detach().means.requires_grad


def test_state_dict_round_trip_via_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    g = _random(n=9, degree=3, batch=(2,))
    save_file(g.state_dict(prefix="avatar."), tmp_path / "g.safetensors")
    back = Gaussians.from_state_dict(load_file(tmp_path / "g.safetensors"), prefix="avatar.")
    _assert_same(back, g)
    with pytest.raises(CheckpointError, match="missing"):
        Gaussians.from_state_dict({"means": g.means})


# ----------------------------------------------------------------------------- PLY
STANDARD_NAMES_DEG1 = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                       + [f"f_rest_{i}" for i in range(9)]
                       + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip_is_exact(tmp_path, degree):
    g = _random(n=33, degree=degree, seed=degree)
    write_ply(tmp_path / "a.ply", g)
    back = read_ply(tmp_path / "a.ply")
    assert back.sh_degree == degree and back.dtype == torch.float32
    _assert_same(back, g)


def test_written_layout_is_standard(tmp_path):
    g = _random(n=2, degree=1)
    g.sh[1, 2, 0] = 7.0  # coefficient 2 of R -> f_rest_1 (channel-major)
    g.sh[1, 1, 2] = 9.0  # coefficient 1 of B -> f_rest_6
    write_ply(tmp_path / "b.ply", g)
    raw = (tmp_path / "b.ply").read_bytes()
    header, body = raw.split(b"end_header\n")
    lines = header.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 2"]
    assert lines[3:] == [f"property float {n}" for n in STANDARD_NAMES_DEG1]
    table = np.frombuffer(body, dtype="<f4").reshape(2, len(STANDARD_NAMES_DEG1))
    col = {n: table[:, i] for i, n in enumerate(STANDARD_NAMES_DEG1)}
    assert col["f_rest_1"][1] == 7.0 and col["f_rest_6"][1] == 9.0
    assert np.array_equal(col["opacity"], g.opacity_logits.numpy())
    assert np.array_equal(col["rot_0"], g.quats[:, 0].numpy())
    assert np.array_equal(col["scale_2"], g.log_scales[:, 2].numpy())
    assert np.all(col["nx"] == 0)


def _hand_vertex(i):
    """Values of vertex i of the hand-written file, by standard property name."""
    v = {"x": 0.5 + i, "y": -1.25, "z": 2.0 * i, "nx": 0.0, "ny": 0.0, "nz": 0.0,
         "f_dc_0": 1.0, "f_dc_1": -0.5, "f_dc_2": 0.25, "opacity": -2.0 + i,
         "scale_0": -3.0, "scale_1": -4.0, "scale_2": -5.0,
         "rot_0": 1.0, "rot_1": 0.0, "rot_2": 0.5 * i, "rot_3": 0.0}
    for j in range(9):
        v[f"f_rest_{j}"] = 0.125 * j - i
    return v


def _check_hand_gaussians(g: Gaussians):
    assert g.num_points == 2 and g.sh_degree == 1
    for i in range(2):
        v = _hand_vertex(i)
        assert g.means[i].tolist() == [v["x"], v["y"], v["z"]]
        assert g.quats[i].tolist() == [v["rot_0"], v["rot_1"], v["rot_2"], v["rot_3"]]
        assert g.log_scales[i].tolist() == [-3.0, -4.0, -5.0]
        assert g.opacity_logits[i].item() == v["opacity"]
        assert g.sh[i, 0].tolist() == [1.0, -0.5, 0.25]
        # f_rest is channel-major: R coeffs 1..3 are f_rest_0..2, G are 3..5, B are 6..8
        for c in range(3):
            for k in range(3):
                assert g.sh[i, 1 + k, c].item() == v[f"f_rest_{3 * c + k}"]
    torch.testing.assert_close(g.opacities[0], torch.tensor(1 / (1 + math.exp(2.0))))


def test_reads_hand_written_standard_binary_ply(tmp_path):
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 2\n"
    header += "".join(f"property float {n}\n" for n in STANDARD_NAMES_DEG1) + "end_header\n"
    body = b"".join(struct.pack("<" + "f" * len(STANDARD_NAMES_DEG1),
                                *[_hand_vertex(i)[n] for n in STANDARD_NAMES_DEG1]) for i in range(2))
    (tmp_path / "std.ply").write_bytes(header.encode() + body)
    _check_hand_gaussians(read_ply(tmp_path / "std.ply"))


def test_reads_shuffled_extra_props_other_types_and_elements(tmp_path):
    # Big-endian, shuffled order, extra properties of other types, a leading element, CRLF lines.
    names = list(reversed(STANDARD_NAMES_DEG1))
    props = [("uchar", "red", "B")] + [("float", n, "f") for n in names[:10]] + [("double", "extra", "d")]
    props += [("float", n, "f") for n in names[10:]]
    header = ["ply", "format binary_big_endian 1.0", "comment written by some tool",
              "element camera 1", "property int id", "property float fov",
              "element vertex 2"] + [f"property {t} {n}" for t, n, _ in props] + ["end_header"]
    body = struct.pack(">if", 3, 0.7)
    for i in range(2):
        v = {**_hand_vertex(i), "red": 200, "extra": 1e300}
        body += struct.pack(">" + "".join(c for _, _, c in props), *[v[n] for _, n, _ in props])
    (tmp_path / "odd.ply").write_bytes(("\r\n".join(header) + "\r\n").encode() + body)
    _check_hand_gaussians(read_ply(tmp_path / "odd.ply"))


def test_reads_ascii_ply(tmp_path):
    names = STANDARD_NAMES_DEG1[::2] + STANDARD_NAMES_DEG1[1::2] + ["alpha"]
    text = "ply\nformat ascii 1.0\nelement vertex 2\n"
    text += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    for i in range(2):
        v = {**_hand_vertex(i), "alpha": 1}
        text += " ".join(repr(float(v[n])) for n in names) + "\n"
    text += "3 0 1 2\n"  # a trailing face element's data is ignored
    (tmp_path / "ascii.ply").write_text(text)
    _check_hand_gaussians(read_ply(tmp_path / "ascii.ply"))


def _std_file(tmp_path, names, n=2, body=None, name="bad.ply"):
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {p}\n" for p in names) + "end_header\n"
    data = body if body is not None else np.zeros((n, len(names)), "<f4").tobytes()
    path = tmp_path / name
    path.write_bytes(header.encode() + data)
    return path


def test_ply_errors(tmp_path):
    (tmp_path / "x.ply").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(InvalidInput, match="not a PLY"):
        read_ply(tmp_path / "x.ply")
    with pytest.raises(NotFound):
        read_ply(tmp_path / "missing.ply")
    no_rot = [n for n in STANDARD_NAMES_DEG1 if n != "rot_3"]
    with pytest.raises(InvalidInput, match="rot_3"):
        read_ply(_std_file(tmp_path, no_rot))
    base = [n for n in STANDARD_NAMES_DEG1 if not n.startswith("f_rest")]
    with pytest.raises(InvalidInput, match="multiple of 3"):
        read_ply(_std_file(tmp_path, base + [f"f_rest_{i}" for i in range(5)]))
    with pytest.raises(InvalidInput, match="SH degree"):
        read_ply(_std_file(tmp_path, base + [f"f_rest_{i}" for i in range(6)]))
    with pytest.raises(InvalidInput, match="numbered"):
        read_ply(_std_file(tmp_path, base + [f"f_rest_{i}" for i in range(1, 10)]))
    full = np.zeros((2, len(STANDARD_NAMES_DEG1)), "<f4").tobytes()
    with pytest.raises(InvalidInput, match="truncated"):
        read_ply(_std_file(tmp_path, STANDARD_NAMES_DEG1, body=full[:-3]))
    path = tmp_path / "nohdr.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 2\n")
    with pytest.raises(InvalidInput, match="end_header"):
        read_ply(path)
    with pytest.raises(InvalidInput, match="unbatched"):
        write_ply(tmp_path / "batched.ply", _random(batch=(2,)))
