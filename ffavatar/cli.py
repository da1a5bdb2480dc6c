"""The ``ffavatar`` command. Each sub-command parses its arguments here and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import FFAvatarError

log = logging.getLogger("ffavatar")


def _add_flame(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flame", metavar="PATH", help="FLAME model file (.pkl/.npz: FLAME 2020, 2023, 2023 Open); "
                   "default: $FFAVATAR_FLAME, else the built-in procedural demo head")
    p.add_argument("--flame-landmarks", metavar="PATH",
                   help="landmark embedding for a user FLAME: flame_static_embedding.pkl, DECA's landmark_embedding.npy, "
                        "VHAP's landmark_embedding_with_eyes.npy or mediapipe_landmark_embedding.npz")


def cmd_head(args: argparse.Namespace) -> int:
    """Export the head model (template and a few poses) as OBJ and print its statistics."""
    import numpy as np
    import torch

    from .flame import FlameModel, load_head_model
    from .flame.subdivide import subdivide
    from .obj import write_obj

    model = load_head_model(args.flame, args.flame_landmarks)
    flame = FlameModel(model)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    faces = model["f"]
    write_obj(out / "head_template.obj", model["v_template"], faces)
    pose = torch.zeros(1, 5, 3)
    pose[0, 2, 0] = 0.35  # jaw open
    expr = torch.zeros(1, flame.n_expr)
    names = flame.expression_names
    for name in ("smile_L", "smile_R"):
        if name in names:
            expr[0, names.index(name)] = 2.0
    posed = flame(expression=expr, pose=pose).vertices[0].numpy()
    write_obj(out / "head_jaw_open_smile.obj", posed, faces)
    rng = np.random.default_rng(args.seed)
    shape = torch.as_tensor(rng.normal(size=(1, flame.n_shape)), dtype=torch.float32)
    write_obj(out / "head_random_identity.obj", flame(shape=shape).vertices[0].numpy(), faces)
    extent = model["v_template"].max(0) - model["v_template"].min(0)
    stats = {
        "head_model_id": flame.model_id, "vertices": int(len(model["v_template"])), "faces": int(len(faces)),
        "shape_components": flame.n_shape, "expression_components": flame.n_expr,
        "landmarks": int(flame.lmk_vertices.shape[0]), "extent_m": [round(float(e), 4) for e in extent],
        "joints": {n: [round(float(c), 4) for c in j] for n, j in
                   zip(("root", "neck", "jaw", "eye_L", "eye_R"), flame().joints[0].tolist())},
        "subdivided_points": {lvl: int(len(subdivide(model, lvl)["v_template"])) for lvl in (1, 2)},
    }
    (out / "head_stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))
    print(f"wrote {out}/head_template.obj, head_jaw_open_smile.obj, head_random_identity.obj, head_stats.json")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Render a synthetic multi-view dataset from the head model (random identities, expressions,
    poses, cameras) in the generic folder format (docs/datasets.md)."""
    from tqdm import tqdm

    from .data.synthetic import SynthConfig, SyntheticHead, generate
    from .flame import load_head_model

    cfg = SynthConfig(identities=args.identities, frames=args.frames, views=args.views, size=args.size,
                      seed=args.seed, subdivision=args.subdivision, lighting=not args.no_lighting)
    head = SyntheticHead(load_head_model(args.flame, args.flame_landmarks), cfg.subdivision)
    with tqdm(total=cfg.identities * cfg.frames * cfg.views, unit="img", desc="synth") as bar:
        out = generate(cfg, args.output, progress=bar.update, head=head)
    print(f"wrote {cfg.identities} identities x {cfg.frames} frames x {cfg.views} views to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the network on few-to-many samples (stage, data, model and optimizer from a TOML config;
    see configs/). Works under torchrun: torchrun --nproc_per_node N -m ffavatar.train --config C."""
    from .train.config import load_config
    from .train.trainer import Trainer

    cfg = load_config(args.config, args.set)
    if args.out:
        cfg.out_dir = args.out
    trainer = Trainer(cfg, flame=args.flame, device=args.device)
    if args.resume:
        trainer.resume()
    trainer.fit()
    if trainer.is_main:
        print(f"checkpoint: {trainer.out / 'checkpoint.safetensors'} (step {trainer.step})")
    return 0


def _reconstructor(args: argparse.Namespace):
    from .api import Reconstructor

    return Reconstructor.from_checkpoint(args.checkpoint, device=args.device, flame=args.flame,
                                         landmarks=args.flame_landmarks)


def _bar(desc: str, total: int | None = None):
    from tqdm import tqdm

    bar = tqdm(total=total or 100, desc=desc, unit="%" if total is None else "it")

    def update(fraction: float, message: str) -> None:
        bar.n = round(fraction * bar.total)
        bar.set_postfix_str(message[-40:])
        bar.refresh()
    return bar, update


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Build an avatar from 1..N portraits of one person (any size, JPEG/PNG; the face is detected and
    cropped unless --crop says otherwise) and save it as .ffa (optionally personalized)."""
    from .images import load_image

    rec = _reconstructor(args)
    images = [load_image(p) for p in args.images]
    bar, update = _bar("reconstruct")
    avatar = rec.reconstruct(images, crop=args.crop, progress=update)
    bar.close()
    if args.personalize_steps:
        bar, update = _bar("personalize")
        r = avatar.personalize(steps=args.personalize_steps, progress=update)
        bar.close()
        print(f"personalized {r['steps']} steps: PSNR {r['psnr_before']:.2f} -> {r['psnr_after']:.2f} dB")
    out = avatar.save(args.output)
    print(f"wrote {out} ({avatar.canonical.num_points} Gaussians, head model {avatar.head_model_id}, "
          f"{avatar.metadata['reconstruct_seconds']:.2f} s)")
    return 0


def cmd_personalize(args: argparse.Namespace) -> int:
    """Fine-tune a saved avatar on its portraits (the same images it was built from, or more of the
    same person) for N steps and save it (in place unless -o is given)."""
    from .api import Avatar
    from .images import load_image

    rec = _reconstructor(args)
    avatar = Avatar.load(args.avatar, rec)
    bar, update = _bar("personalize")
    r = avatar.personalize([load_image(p) for p in args.images], steps=args.steps, crop=args.crop, progress=update)
    bar.close()
    out = avatar.save(args.output or args.avatar)
    print(f"PSNR on the portraits {r['psnr_before']:.2f} -> {r['psnr_after']:.2f} dB in {r['seconds']:.1f} s; wrote {out}")
    return 0


def cmd_animate(args: argparse.Namespace) -> int:
    """Reenact an avatar from a driver clip (video file, image folder or images): FLAME expression,
    pose and camera are predicted from each frame; writes PNG frames, track.npz and an MP4."""
    from tqdm import tqdm

    from .api import Avatar, FlameTrack
    from .images import read_frames, save_image, video_fps, write_video
    from .render.camera import Camera

    rec = _reconstructor(args)
    avatar = Avatar.load(args.avatar, rec)
    out = Path(args.output)
    src = args.driver[0] if len(args.driver) == 1 else args.driver
    fps = video_fps(src) if isinstance(src, str) and Path(src).is_file() and not src.lower().endswith(
        (".png", ".jpg", ".jpeg")) else args.fps
    orbit = None
    if args.camera == "orbit":
        orbit = Camera.orbit(args.orbit_frames, 0.65, 5.0, focal=1.8 * args.size, width=args.size,
                             height=args.size, device=rec.device)
    camera = (lambda i: orbit[i % len(orbit)]) if orbit is not None else None
    frames, params, faces = [], [], []
    for f in tqdm(avatar.animate(read_frames(src, args.max_frames), size=args.size, camera=camera, crop=args.crop),
                  desc="animate", unit="frame"):
        save_image(out / "frames" / f"{f.index:06d}.png", f.image)
        frames.append(f.image)
        params.append(f.params)
        faces.append(f.face)
    FlameTrack.from_params(params, fps, rec.expression_names, faces).save(out / "track.npz")
    write_video(out / "animation.mp4", frames, fps)
    print(f"wrote {len(frames)} frames to {out}/frames, {out}/track.npz, {out}/animation.mp4")
    return 0


def cmd_export_ply(args: argparse.Namespace) -> int:
    """Export an avatar (neutral expression, identity shape applied) as a standard 3DGS PLY."""
    from .api import Avatar

    avatar = Avatar.load(args.avatar, _reconstructor(args))
    print(f"wrote {avatar.to_ply(args.output)}")
    return 0


def cmd_data_from_video(args: argparse.Namespace) -> int:
    """Convert videos (or image folders), one identity each, into a monocular folder dataset with
    time-smoothed face crops (docs/datasets.md)."""
    from tqdm import tqdm

    from .data.video import convert_videos

    with tqdm(desc="frames", unit="frame") as bar:
        report = convert_videos(args.videos, args.output, size=args.size, every=args.every, max_frames=args.max_frames,
                                crop=args.crop, detect_every=args.detect_every, fmt="jpg" if args.jpg else "png",
                                progress=lambda *a: bar.update(1))
    print(f"wrote {len(report.identities)} identities, {sum(report.frames.values())} frames to {report.root}; "
          f"{report.total_skipped} frames without a face skipped" + (f"; failed: {report.failed}" if report.failed else ""))
    return 0 if report.identities or report.existing else 2


def cmd_data_extract(args: argparse.Namespace) -> int:
    """Extract the frames of NeRSemble v2 / benchmark videos (<p>/sequences/<S>/images/cam_<serial>.mp4 and
    alpha_maps/) into images_<scale>/cam_<serial>_<t:05d>.jpg beside them, or under --output with the
    calibration and tracking files copied. Resumable; nothing is deleted (docs/datasets.md)."""
    from tqdm import tqdm

    from .data.nersemble import extract_frames

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    with tqdm(desc="frames", unit="frame") as bar:
        report = extract_frames(args.root, args.output, scale=args.scale, every=args.every,
                                participants=split(args.participants), sequences=split(args.sequences),
                                cameras=split(args.cameras), fmt="png" if args.png else "jpg", progress=bar.update)
    print(f"wrote {sum(report.written.values())} frames of {len(report.written)} sequences to {report.root}; "
          f"{sum(report.existing.values())} were already there")
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    """Pack any dataset (folder, nersemble:PATH, ava256:PATH) into WebDataset tar shards for streaming."""
    from tqdm import tqdm

    from .data.shards import pack
    from .data.sources import open_source

    src = open_source(args.spec)
    with tqdm(desc="identities", unit="id") as bar:
        shards = pack(src, args.output, identities_per_shard=args.per_shard, size=args.size, fit=args.fit,
                      image_format="jpg" if args.jpg else "png", progress=lambda *a: bar.update(1))
    print(f"wrote {len(shards)} shards to {args.output}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    """Print what a dataset spec holds."""
    from .data.sources import open_source

    src = open_source(args.spec)
    if getattr(src, "is_stream", False):
        print(f"{src!r}: {src.num_identities} identities in {len(src.shards)} shards")
        return 0
    n_img = sum(len(f.views) for i in src.identities for f in src.identity(i).frames)
    print(f"{type(src).__name__} kind={src.kind}: {len(src.identities)} identities, {n_img} images")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on held-out identities of a multi-view dataset: K source views of one
    capture build each avatar (optionally personalized); all views of the other frames (novel
    expressions and views) are tracked and rendered. Writes report.md, report.json and grid.png."""
    from .eval.benchmark import run

    rec = _reconstructor(args)
    parse = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    report = run(rec, args.data, args.output, parse(args.views), parse(args.personalize_steps),
                 baseline=not args.no_baseline, lpips_weights=args.lpips, identities=args.identities,
                 max_targets=args.max_targets, progress=lambda m: print(m, flush=True))
    for name, s in report["summary"].items():
        print(f"{name:55s} PSNR {s['psnr']:6.2f}  SSIM {s['ssim']:.4f}")
    print(f"wrote {args.output}/report.md, report.json, grid.png")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the main job end to end on the embedded defaults: held-out synthetic portraits -> avatar
    (.ffa, .ply, turntable) -> reenactment from a driver clip (frames, MP4, FLAME track) and, with
    --blender-python, the extension's headless Blender batch through the backend (.blend with the
    keyframed FLAME rig and a retargeted rig)."""
    from .demo import run

    out = Path(args.output)
    summary = run(out, args.blender_python, args.extension, size=args.size, device=args.device)
    print(f"\nFFAvatar demo finished in {summary['seconds']:.0f} s. Outputs in {out}/:")
    for name, what in (("inputs/", "portraits and the driver clip"), ("avatar.ffa", "the avatar"),
                       ("avatar.ply", "standard 3DGS PLY"), ("turntable.mp4", "turntable of the avatar"),
                       ("frames/", "reenacted frames"), ("animation.mp4", "reenactment video"),
                       ("comparison.mp4", "driver | avatar side by side"), ("track.npz", "predicted FLAME track"),
                       ("blender/demo.blend", "keyframed FLAME rig + retargeted ARKit rig"),
                       ("blender/frames/", "frames as Blender received them"), ("summary.json", "what ran, timings")):
        if (out / name.rstrip("/")).exists():
            print(f"  {name:22s} {what}")
    if summary["python"].get("untrained_model"):
        print("note: no bundled checkpoint was found, an untrained model was used")
    return 0


def cmd_demo_real(args: argparse.Namespace) -> int:
    """The real job end to end: kphotoalbum's demo photos of one man (a Debian package, fetched with
    apt-get download and cached) -> personalized avatar -> animation of its webcam clip movie.avi
    (face landmarker crops, FLAME track with ARKit-52 scores) -> with --blender-python, a saved .blend
    with the keyed FLAME rig and the ARKit character (docs/real.md)."""
    from .demo import run_real

    out = Path(args.output)
    summary = run_real(out, args.blender_python, args.extension, size=args.size, steps=args.steps, device=args.device)
    print(f"\nFFAvatar real demo finished in {summary['seconds']:.0f} s. Outputs in {out}/:")
    for name, what in (("inputs/", "the chosen head crops of the photos"), ("portraits_avatar.png", "photos | avatar before | after personalization"),
                       ("avatar.ffa", "the personalized avatar"), ("comparison.mp4", "driver | avatar side by side"),
                       ("track.npz", "FLAME track with ARKit-52 scores and landmarks"),
                       ("blender/real.blend", "keyed FLAME rig + ARKit character"), ("summary.json", "what ran, timings")):
        if (out / name.rstrip("/")).exists():
            print(f"  {name:22s} {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ffavatar", description="Few-shot, feed-forward 3D Gaussian head avatars (FFAvatar).",
        epilog="Run 'ffavatar COMMAND --help' for each command's options.")
    parser.add_argument("--version", action="version", version=f"ffavatar {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("head", help="export the head model (FLAME or the demo head) as OBJ + statistics",
                       description=cmd_head.__doc__)
    _add_flame(p)
    p.add_argument("-o", "--output", default="out/head", help="output folder (default: out/head)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random identity example")
    p.set_defaults(func=cmd_head)

    p = sub.add_parser("synth", help="render a synthetic multi-view dataset from the head model",
                       description=cmd_synth.__doc__)
    _add_flame(p)
    p.add_argument("--identities", type=int, default=4, help="number of identities (default 4)")
    p.add_argument("--frames", type=int, default=4, help="frames (expressions/poses) per identity (default 4)")
    p.add_argument("--views", type=int, default=4, help="camera views per frame (default 4)")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (square, default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    p.add_argument("--subdivision", type=int, default=1, choices=(0, 1, 2),
                   help="surface subdivision level for the rendered Gaussians (default 1)")
    p.add_argument("--no-lighting", action="store_true", help="flat albedo instead of random lighting")
    p.add_argument("-o", "--output", required=True, help="output dataset folder")
    p.set_defaults(func=cmd_synth)

    def model_args(p: argparse.ArgumentParser) -> None:
        _add_flame(p)
        p.add_argument("--checkpoint", help="model checkpoint (.safetensors); default: the bundled demo model")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        p.add_argument("--crop", default="detect", choices=("detect", "center", "none"),
                       help="detect: find the face and crop around it (default); center: centred square; "
                            "none: images are already square head crops")

    p = sub.add_parser("reconstruct", help="portraits -> avatar (.ffa)", description=cmd_reconstruct.__doc__)
    p.add_argument("images", nargs="+", help="1..N portraits of one person")
    p.add_argument("-o", "--output", required=True, help="avatar file to write (.ffa)")
    p.add_argument("--personalize-steps", type=int, default=0, help="personalization steps after reconstruction")
    model_args(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("personalize", help="fine-tune an avatar on its portraits", description=cmd_personalize.__doc__)
    p.add_argument("avatar", help="avatar file (.ffa)")
    p.add_argument("images", nargs="+", help="portraits of the same person")
    p.add_argument("--steps", type=int, default=500, help="optimization steps (default 500)")
    p.add_argument("-o", "--output", help="write here instead of overwriting the avatar")
    model_args(p)
    p.set_defaults(func=cmd_personalize)

    p = sub.add_parser("animate", help="drive an avatar from a clip -> frames, track, MP4", description=cmd_animate.__doc__)
    p.add_argument("avatar", help="avatar file (.ffa)")
    p.add_argument("--driver", nargs="+", required=True, help="video file, image folder, or image files")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--size", type=int, default=512, help="output size in pixels (default 512)")
    p.add_argument("--camera", default="driver", choices=("driver", "orbit"),
                   help="driver: each frame's predicted camera (default); orbit: a turntable around the head")
    p.add_argument("--orbit-frames", type=int, default=60, help="frames per orbit turn (with --camera orbit)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate for image sequences (videos keep theirs)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many driver frames")
    model_args(p)
    p.set_defaults(func=cmd_animate)

    p = sub.add_parser("export-ply", help="avatar -> standard 3DGS PLY", description=cmd_export_ply.__doc__)
    p.add_argument("avatar", help="avatar file (.ffa)")
    p.add_argument("-o", "--output", required=True, help="PLY file to write")
    model_args(p)
    p.set_defaults(func=cmd_export_ply)

    p = sub.add_parser("data", help="dataset tools: from-video, extract, pack, info")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    d = dsub.add_parser("from-video", help="videos -> monocular folder dataset", description=cmd_data_from_video.__doc__)
    d.add_argument("videos", nargs="+", help="video files or image folders, one identity each")
    d.add_argument("-o", "--output", required=True, help="output dataset folder")
    d.add_argument("--size", type=int, default=256, help="crop size in pixels (default 256)")
    d.add_argument("--every", type=int, default=1, help="keep every Nth frame")
    d.add_argument("--max-frames", type=int, default=None, help="frames per identity at most")
    d.add_argument("--crop", default="detect", choices=("detect", "center"), help="face-tracked or centred crop")
    d.add_argument("--detect-every", type=int, default=1, help="run the face detector every K frames")
    d.add_argument("--jpg", action="store_true", help="store JPEG instead of PNG")
    d.set_defaults(func=cmd_data_from_video)
    d = dsub.add_parser("extract", help="NeRSemble videos -> frames", description=cmd_data_extract.__doc__)
    d.add_argument("root", help="NeRSemble v2 or benchmark folder (with <participant>/sequences/...)")
    d.add_argument("-o", "--output", default=None, help="write here instead of beside the videos")
    d.add_argument("--scale", type=int, default=2, help="shrink frames by this factor (default 2: images_2/)")
    d.add_argument("--every", type=int, default=1, help="keep every Nth frame")
    d.add_argument("--participants", help="comma-separated participant ids (default: all)")
    d.add_argument("--sequences", help="comma-separated sequence names (default: all)")
    d.add_argument("--cameras", help="comma-separated camera serials (default: all)")
    d.add_argument("--png", action="store_true", help="store PNG instead of JPEG")
    d.set_defaults(func=cmd_data_extract)
    d = dsub.add_parser("pack", help="dataset -> WebDataset tar shards", description=cmd_data_pack.__doc__)
    d.add_argument("spec", help="dataset spec: folder, nersemble:PATH, ava256:PATH")
    d.add_argument("-o", "--output", required=True, help="output folder for shard-*.tar + index.json")
    d.add_argument("--per-shard", type=int, default=64, help="identities per shard (default 64)")
    d.add_argument("--size", type=int, default=None, help="re-encode images square at this size")
    d.add_argument("--fit", default="pad", choices=("pad", "crop"), help="how non-square images become square")
    d.add_argument("--jpg", action="store_true", help="store JPEG instead of PNG")
    d.set_defaults(func=cmd_data_pack)
    d = dsub.add_parser("info", help="what a dataset spec holds", description=cmd_data_info.__doc__)
    d.add_argument("spec", help="dataset spec")
    d.set_defaults(func=cmd_data_info)

    p = sub.add_parser("eval", help="held-out quality report (PSNR/SSIM/LPIPS)", description=cmd_eval.__doc__)
    p.add_argument("--data", required=True, help="multi-view folder dataset of held-out identities")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument("--views", default="1,4", help="source view counts, comma-separated (default 1,4)")
    p.add_argument("--personalize-steps", default="0,500", help="personalization steps, comma-separated (default 0,500)")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-prior optimization baseline")
    p.add_argument("--lpips", metavar="WEIGHTS", help="local LPIPS (VGG) weights .safetensors; else LPIPS is skipped")
    p.add_argument("--identities", type=int, default=None, help="evaluate only the first N identities")
    p.add_argument("--max-targets", type=int, default=8, help="targets per identity (default 8)")
    model_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train the network (pretrain / multiview stages)",
                       description=cmd_train.__doc__)
    _add_flame(p)
    p.add_argument("--config", help="TOML config (configs/*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set steps=2000 --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint + train_state")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: per rank)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="run the main job end to end on the built-in defaults", description=cmd_demo.__doc__)
    p.add_argument("-o", "--output", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--blender-python", help="Python of a bpy environment (e.g. .venv-blender-5.2/bin/python) "
                   "to run the Blender part; without it only the Python part runs")
    p.add_argument("--extension", help="the extension zip to install (dist/ffavatar-*-linux_x64.zip)")
    p.add_argument("--size", type=int, default=256, help="render size (default 256)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-real", help="the real job on a real person's photos and webcam clip (kphotoalbum)",
                       description=cmd_demo_real.__doc__)
    p.add_argument("-o", "--output", default="out/demo-real", help="output folder (default: out/demo-real)")
    p.add_argument("--blender-python", help="Python of a bpy environment to run the Blender part")
    p.add_argument("--extension", help="the extension zip to install (dist/ffavatar-*-linux_x64.zip)")
    p.add_argument("--size", type=int, default=256, help="render size (default 256)")
    p.add_argument("--steps", type=int, default=150, help="personalization steps (default 150; ~1.5 s each on 2 CPU cores)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.set_defaults(func=cmd_demo_real)
    return parser


def _end_progress_bars() -> None:
    """Close any progress bar a failed command left open, so the next message starts on its own line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def _check_paths(args: argparse.Namespace) -> None:
    """Fail at once, naming the user's path, on inputs that are not regular files (a folder, a device
    like /dev/zero, a pipe) and on outputs that exist as something else than what is written there."""
    from .errors import InvalidInput

    def listed(value) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])

    for p in listed(getattr(args, "images", None)) + listed(getattr(args, "avatar", None)):
        if Path(p).exists() and not Path(p).is_file():
            raise InvalidInput(f"{p} is not a regular file (a folder, device or pipe); give an image or avatar file")
    for p in listed(getattr(args, "driver", None)):
        if Path(p).exists() and not (Path(p).is_file() or Path(p).is_dir()):
            raise InvalidInput(f"{p} is not a video file, an image file or a folder of images")
    out = getattr(args, "output", None)
    if isinstance(out, str) and Path(out).exists():
        wants_file = args.func in (cmd_reconstruct, cmd_personalize, cmd_export_ply)
        if wants_file and not Path(out).is_file():
            raise InvalidInput(f"-o {out} is {'a folder' if Path(out).is_dir() else 'not a regular file'}; "
                               "give the name of the file to write")
        if not wants_file and not Path(out).is_dir():
            raise InvalidInput(f"-o {out} exists and is not a folder; give a folder to write into")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_paths(args)
        return args.func(args)
    except FFAvatarError as e:
        _end_progress_bars()
        print(f"error [{e.code}]: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the user named could not be read or written (disk full, name too long...)
        from .errors import from_os_error

        _end_progress_bars()
        err = from_os_error(e, f"'{e.filename}'" if e.filename else "a file")
        print(f"error [{err.code}]: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
