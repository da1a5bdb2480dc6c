"""Real faces: the MediaPipe Face Landmarker (478 landmarks, ARKit-52 scores) with OpenCV's Haar
detector as the fallback, and stable, padded head crops for portraits and clips.

``landmarker`` finds faces in one image; ``crop`` turns faces into crop boxes and follows them over
a clip (smoothing, holding and interpolating frames without a face).
"""

from .crop import ClipFace, CropBox, FaceCropper, crop_image, face_box
from .landmarker import ARKIT_NAMES, Face, FaceFinder, landmarker_model_path, read_landmarker_model

__all__ = ["ARKIT_NAMES", "ClipFace", "CropBox", "Face", "FaceCropper", "FaceFinder", "crop_image", "face_box",
           "landmarker_model_path", "read_landmarker_model"]
