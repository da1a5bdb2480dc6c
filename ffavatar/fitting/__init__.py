"""Fitting FLAME to observations: landmarks (``landmarks``)."""

from .landmarks import (IBUG68_FROM_MEDIAPIPE, Correspondence, FitConfig, LandmarkFit, fit_flame, fit_track,
                        landmark_error, project_landmarks)

__all__ = ["IBUG68_FROM_MEDIAPIPE", "Correspondence", "FitConfig", "LandmarkFit", "fit_flame", "fit_track",
           "landmark_error", "project_landmarks"]
