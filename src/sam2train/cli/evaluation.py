"""`sam2train evaluate`, `predict` and `export`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sam2train.errors import CheckpointNotFoundError, UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_predict_parser(sub)
    _add_export_parser(sub)

    ev = sub.add_parser("evaluate", help="score predicted masks against ground truth (DAVIS J, F, J&F)")
    ev.add_argument("--pred", type=Path, required=True, help="predictions: <pred>/<sequence>/<frame>.png")
    ev.add_argument("--gt", type=Path, required=True, help="ground truth: a DAVIS root or a sequences folder")
    ev.add_argument("--out", type=Path, help="write the scores as JSON")
    ev.set_defaults(run=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from sam2train.eval.evaluate import evaluate_folders

    scores = evaluate_folders(args.pred, args.gt)
    print(f"{'sequence':<24}{'J&F':>8}{'J':>8}{'F':>8}")
    for seq, s in sorted(scores["per_sequence"].items()):
        print(f"{seq:<24}{s['J&F']:>8.4f}{s['J']:>8.4f}{s['F']:>8.4f}")
    print(f"{'overall':<24}{scores['J&F']:>8.4f}{scores['J']:>8.4f}{scores['F']:>8.4f}")
    print(
        f"J recall {scores['J_recall']:.4f}  F recall {scores['F_recall']:.4f}  "
        f"J decay {scores['J_decay']:.4f}  F decay {scores['F_decay']:.4f}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(scores, indent=2))
        print(f"scores written to {args.out}")
    return 0


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    """Register `sam2train predict` (imports nothing heavy)."""
    p = sub.add_parser(
        "predict",
        help="track first-frame prompts through a video and write palette PNGs",
        description="Segment a video with a fine-tuned (or official) SAM 2: prompts on the first frame, masks "
        "for every frame as DAVIS palette PNGs <out>/<video>/<frame>.png (pixel value = object id).",
    )
    p.add_argument(
        "--checkpoint", "--ckpt", required=True, help="Lightning checkpoint or official/exported .pt"
    )
    p.add_argument(
        "--frames", required=True, help="folder of jpg/jpeg/png frames (sorted by name) or a video"
    )
    p.add_argument("--out", required=True, type=Path, help="output root: PNGs go to <out>/<video name>/")
    p.add_argument("--prompt-mask", help="first-frame mask PNG: palette (id = index) or binary (object 1)")
    p.add_argument("--points", help="'x,y,label;...' first-frame clicks in pixels (1 positive, 0 negative)")
    p.add_argument("--box", help="'x0,y0,x1,y1' first-frame box in pixels")
    p.add_argument("--overlay", type=Path, help="also write masks over the frames to FILE.mp4 or FILE.gif")
    p.add_argument(
        "--model-config", help="config name or model YAML (for a .pt; default: FILE.yaml beside it)"
    )
    p.add_argument("--image-size", type=int, help="model input size (default: the checkpoint's or config's)")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available"
    )
    p.set_defaults(run=cmd_predict)


def _check_args(args: argparse.Namespace) -> None:
    """Argument errors found before anything is read or built."""
    from sam2train.eval.predict import PROMPT_FLAGS, import_av

    given = [f for f, v in zip(PROMPT_FLAGS, (args.prompt_mask, args.points, args.box)) if v is not None]
    if len(given) != 1:
        raise UserError(
            f"give exactly one first-frame prompt: {', '.join(PROMPT_FLAGS)} (got {' and '.join(given) or 'none'})"
        )
    suffix = args.overlay.suffix.lower() if args.overlay is not None else None
    if suffix not in (None, ".mp4", ".gif"):
        raise UserError(f"--overlay {args.overlay}: the file name must end in .mp4 or .gif")
    if suffix == ".mp4":
        import_av()
    if args.image_size is not None and (args.image_size < 64 or args.image_size % 32):
        raise UserError(f"--image-size {args.image_size}: must be a multiple of 32 and at least 64")
    from sam2train.model.build import OFFICIAL_CONFIGS, resolve_model_config

    if not Path(args.checkpoint).expanduser().is_file():
        raise CheckpointNotFoundError(f"--checkpoint: checkpoint file not found: {args.checkpoint}")
    if args.model_config is not None:
        try:
            resolve_model_config(args.model_config)
        except UserError:
            raise UserError(
                f"--model-config {args.model_config}: neither an official config name "
                f"({', '.join(OFFICIAL_CONFIGS)}) nor an existing model YAML"
            ) from None


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    return name


def cmd_predict(args: argparse.Namespace) -> int:
    import time

    from sam2train.eval.export import load_for_inference
    from sam2train.eval.predict import model_prompts, open_frames, predict_video

    _check_args(args)
    source = open_frames(args.frames)
    model_prompts(args, source.size, 64)  # validate the prompt against the frames before loading the model
    device = _device(args.device)
    model = load_for_inference(args.checkpoint, args.model_config, args.image_size, device)
    ids, prompts = model_prompts(args, source.size, model.image_size)
    start = time.time()
    count = predict_video(model, source, ids, prompts, args.out, args.overlay)
    seconds = time.time() - start
    print(
        f"{source.name}: {count} frames, objects {ids}, {model.image_size} px on {device} in {seconds:.1f} s "
        f"-> {args.out / source.name}" + (f", overlay {args.overlay}" if args.overlay else "")
    )
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register `sam2train export --ckpt CKPT --out FILE.pt`."""
    p = sub.add_parser(
        "export",
        help="write an official {'model': state_dict} file (+ model YAML) for Meta's SAM 2 tools",
        description="Export a sam2train Lightning checkpoint to FILE.pt, which "
        "sam2.build_sam.build_sam2_video_predictor loads with strict keys, and FILE.yaml, its model config.",
    )
    p.add_argument("--ckpt", "--checkpoint", dest="ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    p.add_argument("--out", required=True, type=Path, help="the .pt file to write (FILE.yaml goes beside it)")
    p.set_defaults(run=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from sam2train.eval.export import export_checkpoint

    weights, yaml_path, call = export_checkpoint(args.ckpt, args.out)
    print(f"exported {args.ckpt} -> {weights} (model config: {yaml_path})")
    print("Load it with Meta's video predictor (add device='cpu' without a GPU):")
    print(call)
    return 0
