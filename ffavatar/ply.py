"""Standard 3DGS PLY files (the layout of the original 3DGS code, read by most Gaussian viewers).

One ``vertex`` element, all float32, binary little-endian::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1} opacity scale_0..2 rot_0..3

``f_rest`` is channel-major (the K-1 higher coefficients of R, then G, then B), ``opacity`` is the
logit, ``scale_*`` are logs and ``rot_*`` is a wxyz quaternion: exactly the raw fields of
:class:`~ffavatar.gaussians.Gaussians`, so a round trip is bit-exact in float32.

The reader also takes ASCII and big-endian files, any property order, extra properties (ignored),
other property types (converted to float32) and other elements before or after ``vertex``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch

from ffavatar.errors import InvalidInput, NotFound
from ffavatar.gaussians import Gaussians, sh_degree_from_bases

log = logging.getLogger(__name__)

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
_MAX_HEADER_BYTES = 1 << 20


def write_ply(path: str | Path, gaussians: Gaussians) -> None:
    """Write unbatched Gaussians (N points) as a standard binary 3DGS PLY (float32)."""
    if len(gaussians.batch_shape) != 0:
        raise InvalidInput(
            f"write_ply takes unbatched Gaussians, got batch shape {tuple(gaussians.batch_shape)}",
            hint="index one item first, e.g. g[0]",
        )
    g = gaussians.detach().to(device="cpu", dtype=torch.float32)
    n, k = g.num_points, g.sh.shape[-2]
    f_rest = g.sh[:, 1:, :].transpose(1, 2).reshape(n, 3 * (k - 1))  # (N, 3, K-1): channel-major
    columns = [g.means, torch.zeros(n, 3), g.sh[:, 0, :], f_rest,
               g.opacity_logits[:, None], g.log_scales, g.quats]
    data = torch.cat(columns, dim=1).numpy().astype("<f4", copy=False)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert data.shape[1] == len(names)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names]
    header += ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())
    log.debug("wrote %d Gaussians (sh degree %d) to %s", n, g.sh_degree, path)


def read_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS PLY into unbatched float32 CPU Gaussians; the SH degree comes from f_rest."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"PLY file {path} does not exist") from None
    fmt, elements, body = _parse_header(raw, path)
    columns = _read_vertex_columns(fmt, elements, body, path)
    return _to_gaussians(columns, path)


def _parse_header(raw: bytes, path: Path) -> tuple[str, list[tuple[str, int, list[tuple[str, str]]]], bytes]:
    """Return (format, [(element name, count, [(prop name, numpy type)])], bytes after the header)."""
    if not raw.startswith(b"ply") or raw[3:4] not in (b"\n", b"\r"):
        raise InvalidInput(f"{path} is not a PLY file (it does not start with 'ply')")
    m = re.search(rb"end_header[ \t]*\r?\n", raw[:_MAX_HEADER_BYTES])
    if m is None:
        raise InvalidInput(f"{path}: PLY header has no 'end_header' line (truncated or not a PLY file)")
    try:
        lines = raw[: m.start()].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: PLY header is not ASCII text") from None
    fmt = None
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for number, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        bad = InvalidInput(f"{path}: malformed PLY header line {number}: {line!r}")
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise bad
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise bad
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise bad
            if len(words) == 5 and words[1] == "list":
                elements[-1][2].append((words[4], "list"))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise bad
        else:
            raise bad
    if fmt is None:
        raise InvalidInput(f"{path}: PLY header has no 'format' line")
    return fmt, elements, raw[m.end():]


def _read_vertex_columns(fmt, elements, body: bytes, path: Path) -> dict[str, np.ndarray]:
    """Locate the vertex element in the body and return its properties as numeric columns."""
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise InvalidInput(f"{path}: PLY file has no 'vertex' element (elements: {names})")
    vi = names.index("vertex")
    for name, _, props in elements[: vi + 1]:
        if any(t == "list" for _, t in props):
            raise InvalidInput(
                f"{path}: element '{name}' has list properties before/in the vertex data; "
                "a 3DGS PLY has none"
            )
    _, count, props = elements[vi]
    prop_names = [p for p, _ in props]
    if len(set(prop_names)) != len(prop_names):
        raise InvalidInput(f"{path}: duplicate vertex property names in {prop_names}")
    if fmt == "ascii":
        skip = sum(c * len(p) for _, c, p in elements[:vi])
        tokens = body.split()
        need = skip + count * len(props)
        if len(tokens) < need:
            raise InvalidInput(
                f"{path}: truncated ASCII PLY: {count} vertices need {need} values, found {len(tokens)}"
            )
        try:
            table = np.array(tokens[skip:need], dtype=np.float64).reshape(count, len(props))
        except ValueError:
            raise InvalidInput(f"{path}: ASCII PLY vertex data has non-numeric values") from None
        return {p: table[:, i] for i, p in enumerate(prop_names)}
    endian = _FORMATS[fmt]
    offset = sum(c * np.dtype([(n, endian + t) for n, t in p]).itemsize for _, c, p in elements[:vi])
    dtype = np.dtype([(n, endian + t) for n, t in props])
    need = offset + count * dtype.itemsize
    if len(body) < need:
        raise InvalidInput(
            f"{path}: truncated PLY: {count} vertices need {need} bytes of data, found {len(body)}"
        )
    table = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return {p: table[p] for p in prop_names}


def _to_gaussians(columns: dict[str, np.ndarray], path: Path) -> Gaussians:
    missing = [p for p in _REQUIRED if p not in columns]
    if missing:
        raise InvalidInput(
            f"{path}: PLY vertex element lacks 3DGS properties {missing}",
            hint="a 3DGS PLY needs x y z f_dc_0..2 opacity scale_0..2 rot_0..3 (f_rest_* optional)",
        )
    rest_ids = sorted(int(p[7:]) for p in columns if re.fullmatch(r"f_rest_\d+", p))
    n_rest = len(rest_ids)
    if rest_ids != list(range(n_rest)):
        raise InvalidInput(f"{path}: f_rest properties are not numbered 0..{n_rest - 1}")
    if n_rest % 3 != 0:
        raise InvalidInput(f"{path}: {n_rest} f_rest properties is not a multiple of 3 (RGB)")
    k = n_rest // 3 + 1  # SH coefficients per channel
    try:
        sh_degree_from_bases(k)
    except InvalidInput:
        raise InvalidInput(
            f"{path}: {n_rest} f_rest properties does not match any SH degree "
            "(expected 0, 9, 24, 45, ... = 3*((d+1)**2 - 1))"
        ) from None

    def stack(names: list[str]) -> torch.Tensor:  # only the columns we use become float32
        return torch.from_numpy(np.stack([columns[n].astype(np.float32) for n in names], axis=-1))

    n = len(columns["x"])
    dc = stack(["f_dc_0", "f_dc_1", "f_dc_2"])
    rest = stack([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    rest = rest.reshape(n, 3, k - 1).transpose(1, 2)  # channel-major -> (N, K-1, 3)
    return Gaussians(
        means=stack(["x", "y", "z"]),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        log_scales=stack(["scale_0", "scale_1", "scale_2"]),
        opacity_logits=stack(["opacity"])[:, 0],
        sh=torch.cat([dc[:, None, :], rest], dim=1).contiguous(),
    )
