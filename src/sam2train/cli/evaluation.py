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
    ev.add_argument(
        "--sequences",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        help="score only these sequences, comma-separated (default: every sequence of the ground truth)",
    )
    ev.add_argument(
        "--no-skip-first-last",
        dest="skip_first_last",
        action="store_false",
        help="score the first (prompted) and last frames too (the DAVIS protocol skips them)",
    )
    ev.set_defaults(run=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from sam2train.eval.evaluate import evaluate_folders

    scores = evaluate_folders(
        args.pred, args.gt, sequences=args.sequences, skip_first_last=args.skip_first_last
    )
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
        "--checkpoint",
        "--ckpt",
        required=True,
        help="Lightning checkpoint, official/exported .pt, .safetensors, or a transformers SAM 2 folder",
    )
    _add_trust_arg(p)
    p.add_argument(
        "--frames", required=True, help="folder of jpg/jpeg/png frames (sorted by name) or a video"
    )
    p.add_argument("--out", required=True, type=Path, help="output root: PNGs go to <out>/<video name>/")
    p.add_argument("--prompt-mask", help="first-frame mask PNG: palette (id = index) or binary (object 1)")
    p.add_argument(
        "--objects", help="with --prompt-mask: track only these object ids, comma-separated (e.g. 1,4,7)"
    )
    p.add_argument(
        "--points",
        action="append",
        help="[ID:]x,y[,label];... first-frame clicks of one object in pixels (label 1 positive, the default, "
        "0 negative); repeat for more objects, e.g. --points 1:100,200 --points 2:50,60",
    )
    p.add_argument(
        "--box",
        action="append",
        help="[ID:]x0,y0,x1,y1 first-frame box of one object in pixels; repeat for more objects",
    )
    p.add_argument("--overlay", type=Path, help="also write masks over the frames to FILE.mp4 or FILE.gif")
    p.add_argument(
        "--model-config",
        help="config name or model YAML (for a .pt; default: FILE.yaml beside it, else the official config "
        "whose architecture the weights have)",
    )
    p.add_argument("--image-size", type=int, help="model input size (default: the checkpoint's or config's)")
    p.add_argument(
        "--adapters",
        type=Path,
        help="LoRA adapter folder (`export --adapters-only`) to merge into --checkpoint",
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available"
    )
    _add_memory_args(p)
    p.set_defaults(run=cmd_predict)


def _add_memory_args(p: argparse.ArgumentParser) -> None:
    """predict's memory and speed flags: object groups, precision, offloading."""
    p.add_argument(
        "--object-chunk",
        type=_positive_int,
        metavar="K",
        help="track K objects per SAM call, each group on the frame's shared features (same masks; memory grows "
        "with K). Default: as many as a fixed working-memory budget allows at the model's size "
        "(8 at 256 px, 2 at 512, 1 at 1024: about the working memory of Meta's predictor)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast on CUDA (as Meta's predictor is run), fp32 on the CPU",
    )
    p.add_argument(
        "--offload",
        action="store_true",
        help="keep the memory bank in host memory (frames always are): less GPU memory for a little speed",
    )


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got '{text}'")
    return int(text)


def _check_args(args: argparse.Namespace) -> None:
    """Argument errors found before anything is read or built."""
    from sam2train.eval.predict import import_av
    from sam2train.eval.prompts import PROMPT_FLAGS

    given = [f for f, v in zip(PROMPT_FLAGS, (args.prompt_mask, args.points, args.box)) if v is not None]
    if not given or (args.prompt_mask is not None and len(given) > 1):
        raise UserError(
            f"give a first-frame prompt: {', '.join(PROMPT_FLAGS)} (got {' and '.join(given) or 'none'}); "
            "--prompt-mask goes alone, --points and --box repeat, one object each"
        )
    suffix = args.overlay.suffix.lower() if args.overlay is not None else None
    if suffix not in (None, ".mp4", ".gif"):
        raise UserError(f"--overlay {args.overlay}: the file name must end in .mp4 or .gif")
    if suffix == ".mp4":
        import_av()
    if args.image_size is not None and (args.image_size < 64 or args.image_size % 32):
        raise UserError(f"--image-size {args.image_size}: must be a multiple of 32 and at least 64")
    from sam2train.model.build import OFFICIAL_CONFIGS, resolve_model_config

    if not Path(args.checkpoint).expanduser().exists():  # a file, or a transformers SAM 2 folder
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
    from sam2train.eval.predict import open_frames, predict_video
    from sam2train.eval.prompts import model_prompts

    _check_args(args)
    source = open_frames(args.frames)
    model_prompts(args, source.size, 64)  # validate the prompt against the frames before loading the model
    device = _device(args.device)
    model = load_for_inference(
        args.checkpoint, args.model_config, args.image_size, device, args.trust_checkpoint, args.adapters
    )
    ids, prompts = model_prompts(args, source.size, model.image_size)
    start = time.time()
    count = predict_video(
        model,
        source,
        ids,
        prompts,
        args.out,
        args.overlay,
        object_chunk=args.object_chunk,
        offload=args.offload,
        bf16=args.precision == "bf16" or (args.precision == "auto" and device == "cuda"),
    )
    seconds = time.time() - start
    print(
        f"{source.name}: {count} frames, objects {ids}, {model.image_size} px on {device} in {seconds:.1f} s "
        f"({count / max(seconds, 1e-9):.2f} frames/s) -> {args.out / source.name}"
        + (f", overlay {args.overlay}" if args.overlay else "")
    )
    return 0


def _add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle the checkpoint in full even if the safe loader refuses it (it can run code): "
        "only for a file you made yourself",
    )


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register `sam2train export --ckpt CKPT --out FILE.pt` (or `--format safetensors --out FILE.safetensors`)."""
    from sam2train.eval.export import EXPORT_FORMATS  # plain Python at import: the parser stays cheap

    p = sub.add_parser(
        "export",
        help="write an official {'model': state_dict} file (+ model YAML) for Meta's SAM 2 tools",
        description="Export a sam2train Lightning checkpoint to FILE.pt, which "
        "sam2.build_sam.build_sam2_video_predictor loads with strict keys, and FILE.yaml, its model config.",
    )
    p.add_argument(
        "--ckpt",
        "--checkpoint",
        dest="ckpt",
        required=True,
        help="Lightning checkpoint (.ckpt), a .safetensors file export wrote, or a transformers SAM 2 folder",
    )
    p.add_argument("--out", required=True, type=Path, help="the file to write (FILE.yaml goes beside it)")
    p.add_argument(
        "--format",
        choices=list(EXPORT_FORMATS),
        default=next(iter(EXPORT_FORMATS)),
        help="pt: Meta's {'model': state_dict} (default); safetensors: no pickle, config in its metadata; "
        "hf: a folder for transformers' Sam2VideoModel and Sam2VideoProcessor (--out is the folder)",
    )
    p.add_argument(
        "--adapters-only",
        action="store_true",
        help="write only the LoRA adapters (and fully trained groups) to the folder --out, in peft's format",
    )
    _add_trust_arg(p)
    p.set_defaults(run=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from sam2train.eval.export import export_adapters, export_checkpoint

    if args.adapters_only:
        folder = export_adapters(args.ckpt, args.out, args.trust_checkpoint)
        print(f"exported the adapters of {args.ckpt} -> {folder}")
        print(f"Use them on the base: sam2train predict --checkpoint BASE.pt --adapters {folder} ...")
        return 0
    weights, yaml_path, call = export_checkpoint(args.ckpt, args.out, args.format, args.trust_checkpoint)
    print(f"exported {args.ckpt} -> {weights} (model config: {yaml_path})")
    if args.format == "hf":
        print("Load it with transformers (Sam2Model for images):")
        print(call)
        return 0
    print("Load it with Meta's video predictor (add device='cpu' without a GPU):")
    print(call)
    return 0
