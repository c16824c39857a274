"""The fine-tuning recipes: `sam2.1_official_finetune.yaml` says what Meta's MOSE fine-tune says, the frozen-encoder
recipes freeze what they claim and allow the feature cache, and each recipe trains 2 steps end to end.

That every shipped YAML parses (and holds the values it writes) is `test_config.py::test_every_shipped_yaml_parses`,
which globs configs/ and so covers these files too; here are the checks specific to each recipe. The recipes ship
as package data (`src/sam2train/recipes`, which `configs/` links to): `--config NAME`, `base: NAME` and
`sam2train recipes` work from any folder and from a built wheel.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO, fit_args
from sam2train.cli import main
from sam2train.config import TRAINABLE_GROUPS, VALID_KEYS, Config, load_config
from sam2train.errors import ConfigError
from sam2train.model import corrections
from sam2train.model.feature_cache import check_cache_allowed

CONFIGS = REPO / "configs"
RECIPES_DOC = REPO / "docs" / "recipes.md"
OFFICIAL = CONFIGS / "sam2.1_official_finetune.yaml"
MEMORY_ONLY = CONFIGS / "memory_only.yaml"
DECODER_AND_MEMORY = CONFIGS / "decoder_and_memory.yaml"
MOSE_RECIPE = "configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"
ALL_GROUPS = list(TRAINABLE_GROUPS)
MEMORY_GROUPS = ["memory_attention", "memory_encoder", "obj_ptr_proj", "obj_ptr_tpos_proj"]


@pytest.fixture(scope="module")
def mose() -> dict:
    """Meta's MOSE fine-tune YAML as written (unresolved: `${scratch.*}` stay references)."""
    import sam2

    path = Path(sam2.__file__).parent / MOSE_RECIPE
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def _transform(mose: dict, name: str, consistent: bool = True) -> dict:
    for t in mose["vos"]["train_transforms"][0]["transforms"]:
        if t["_target_"].endswith(f".{name}") and t.get("consistent_transform", True) == consistent:
            return t
    raise KeyError(name)


def test_official_recipe_says_what_metas_file_says(mose: dict) -> None:
    cfg = load_config(OFFICIAL)
    scratch, model, optim = mose["scratch"], mose["trainer"]["model"], mose["trainer"]["optim"]
    assert (
        cfg.model.config == "sam2.1_hiera_b+"
        and cfg.model.checkpoint == "checkpoints/sam2.1_hiera_base_plus.pt"
    )
    ckpt = mose["trainer"]["checkpoint"]["model_weight_initializer"]["state_dict"]["checkpoint_path"]
    assert Path(ckpt).name == Path(cfg.model.checkpoint).name
    assert cfg.model.image_size == scratch["resolution"]
    assert (cfg.data.clip_length, cfg.data.max_objects) == (scratch["num_frames"], scratch["max_num_objects"])
    assert (cfg.data.batch_size, cfg.data.num_workers) == (
        scratch["train_batch_size"],
        scratch["num_train_workers"],
    )
    assert cfg.model.trainable_modules == ALL_GROUPS and "freeze_image_encoder" not in model
    assert (
        cfg.model.bptt and cfg.model.mask_prompt_passthrough == model["use_mask_input_as_output_without_sam"]
    )
    # prompts: p(points or box) then p(box | points or box)
    p_pt, p_box = model["prob_to_use_pt_input_for_train"], model["prob_to_use_box_input_for_train"]
    p = cfg.prompts
    assert (p.type, p.mask_prob, p.box_prob, p.point_prob) == (
        "mixed",
        1 - p_pt,
        p_pt * p_box,
        p_pt * (1 - p_box),
    )
    assert p.first_point == "uniform" and (p.num_pos_points, p.num_neg_points) == (1, 0)
    assert (
        p.max_cond_frames == model["num_init_cond_frames_for_train"]
        and model["rand_init_cond_frames_for_train"]
    )
    assert p.frames_to_correct == model["num_frames_to_correct_for_train"]
    assert p.num_correction_points == model["num_correction_pt_per_frame"]
    assert p.correction_from_gt_prob == model["prob_to_sample_from_gt_for_train"]
    assert p.corrections_as_cond == model["add_all_frames_to_correct_as_cond"]
    # loss
    loss = mose["trainer"]["loss"]["all"]
    weights = loss["weight_dict"]
    s = cfg.loss.sam2
    assert cfg.loss.type == "sam2"
    assert (s.mask_weight, s.dice_weight, s.iou_weight, s.class_weight) == (
        weights["loss_mask"],
        weights["loss_dice"],
        weights["loss_iou"],
        weights["loss_class"],
    )
    assert (s.iou_loss == "l1") == loss["iou_use_l1_loss"] and s.supervise_all_iou == loss[
        "supervise_all_iou"
    ]
    assert (s.class_focal_alpha, s.class_focal_gamma) == (
        loss["focal_alpha_obj_score"],
        loss["focal_gamma_obj_score"],
    )
    # optimizer, schedule, trainer
    o = cfg.optimizer
    assert o.type == optim["optimizer"]["_target_"].rsplit(".", 1)[1]
    assert (o.lr, o.image_encoder_lr) == (scratch["base_lr"], scratch["vision_lr"])
    assert o.layer_decay == optim["param_group_modifiers"][0]["layer_decay_value"]
    assert o.weight_decay == optim["options"]["weight_decay"][0]["scheduler"]["value"]
    assert "pos_embed" not in o.no_weight_decay and {"bias", "norm"} <= set(o.no_weight_decay)
    end = optim["options"]["lr"][0]["scheduler"]["end_value"]
    assert end == "${divide:${scratch.base_lr},10}" and cfg.scheduler.eta_min_ratio == pytest.approx(0.1)
    assert cfg.scheduler.type == "CosineAnnealingLR" and cfg.scheduler.T_max == cfg.trainer.max_epochs
    assert cfg.trainer.max_epochs == scratch["num_epochs"] * mose["dataset"]["multiplier"]
    assert cfg.trainer.gradient_clip_val == optim["gradient_clip"]["max_norm"]
    assert cfg.trainer.precision == "bf16-mixed" and optim["amp"]["amp_dtype"] == "bfloat16"
    assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == mose["launcher"]["gpus_per_node"]
    # augmentation (the clip-consistent transforms)
    a = cfg.data.aug
    assert cfg.data.augment and a.hflip_prob == 0.5 and _transform(mose, "RandomHorizontalFlip")
    affine = _transform(mose, "RandomAffine")
    assert (a.degrees, a.shear) == (affine["degrees"], affine["shear"])
    assert a.translate == 0 and a.scale_min == 1.0 and "translate" not in affine and "scale" not in affine
    jitter = _transform(mose, "ColorJitter")
    assert (a.brightness, a.contrast, a.saturation) == (
        jitter["brightness"],
        jitter["contrast"],
        jitter["saturation"],
    )
    assert jitter["hue"] is None and a.hue == 0


def test_frozen_encoder_recipes_train_what_they_say_and_allow_the_cache() -> None:
    memory = load_config(MEMORY_ONLY)
    both = load_config(DECODER_AND_MEMORY)
    assert memory.model.trainable_modules == MEMORY_GROUPS
    assert set(both.model.trainable_modules) == set(ALL_GROUPS) - {"image_encoder"}
    for path in (MEMORY_ONLY, DECODER_AND_MEMORY):
        check_cache_allowed(
            load_config(path, ["model.cache_features=true"])
        )  # no error: encoder frozen, no aug
        with pytest.raises(ConfigError, match="data.augment"):
            check_cache_allowed(load_config(path, ["model.cache_features=true", "data.augment=true"]))
    with pytest.raises(ConfigError, match="image_encoder"):
        check_cache_allowed(load_config(OFFICIAL, ["model.cache_features=true", "data.augment=false"]))
    # the cosine spans the run and ends at lr/10
    for cfg in (memory, both):
        assert cfg.scheduler.T_max == cfg.trainer.max_epochs and cfg.scheduler.eta_min_ratio == pytest.approx(
            0.1
        )


@pytest.mark.parametrize("path", [OFFICIAL, MEMORY_ONLY, DECODER_AND_MEMORY], ids=lambda p: p.stem)
def test_recipe_overrides_only_what_it_changes(path: Path) -> None:
    """A recipe names a base and sets no key to the value its base already gives (compose, don't copy), except
    the official recipe, which spells out Meta's values as a translation table."""
    tree = yaml.safe_load(path.read_text())
    assert tree["base"]
    if path == OFFICIAL:
        return
    base = load_config(path.parent / tree["base"])
    own = load_config(path)
    for section, keys in tree.items():
        if section == "base":
            continue
        for key in keys:
            assert getattr(getattr(own, section), key) != getattr(getattr(base, section), key), (
                f"{section}.{key}"
            )


def test_recipes_page_names_only_real_keys_files_and_commands() -> None:
    """docs/recipes.md: every dotted config key it quotes exists, every config file it links or names exists (in
    the repository, or in the sam2 package for Meta's), and every `sam2train fit` command resolves its config."""
    import sam2

    text = RECIPES_DOC.read_text()
    blocks = re.findall(r"```\w*\n(.*?)```", text, re.S)
    # table rows: every cell but the third, which holds Meta's keys (`trainer.model`, ...)
    ours = [
        "|".join(c for i, c in enumerate(line.split("|")) if i != 3) if line.startswith("|") else line
        for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines()
    ]
    spans = re.findall(r"`([^`\n]+)`", "\n".join(ours))
    sections = "|".join(sorted({k.split(".")[0] for k in VALID_KEYS if "." in k}))
    dotted = re.compile(rf"^({sections})\.[\w.]+")
    words = " ".join(spans + blocks).replace("`", " ").split()
    keys = {m.group(0).rstrip(".") for word in words if (m := dotted.match(word))}
    assert len(keys) > 30 and not sorted(keys - set(VALID_KEYS))
    package = Path(sam2.__file__).parent
    for name in set(re.findall(r"(?:sam2/)?configs/[\w./+-]+?\.yaml", text)):
        assert (REPO / name).is_file() or (package / name.removeprefix("sam2/")).is_file(), name
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    fits = [argv for argv in map(shlex.split, lines) if argv[:2] == ["sam2train", "fit"]]
    assert len(fits) == 2
    for argv in fits:
        config = argv[argv.index("--config") + 1]
        load_config(REPO / config, [a for a in argv[2:] if "=" in a])


def test_every_object_by_default_and_each_recipe_says_its_cap() -> None:
    """`data.max_objects` is null (every object) by default; a recipe that caps it writes the cap with a comment
    saying why, in its own file or the base it names (Meta's 3 stays in the official recipe)."""
    assert (
        Config().data.max_objects is None and load_config(CONFIGS / "default.yaml").data.max_objects is None
    )
    assert load_config(OFFICIAL).data.max_objects == 3
    for path in sorted(CONFIGS.glob("*.yaml")):
        chain = [path]
        while "max_objects:" not in chain[-1].read_text():
            chain.append(chain[-1].parent / yaml.safe_load(chain[-1].read_text())["base"])
        line = next(ln for ln in chain[-1].read_text().splitlines() if "max_objects:" in ln)
        text = chain[-1].read_text()
        before = text[: text.index(line)].splitlines()[-1]
        assert "#" in line or before.strip().startswith("#"), (
            f"{chain[-1].name}: max_objects without a reason"
        )


def test_max_objects_null_keeps_every_object_of_a_clip(tmp_path: Path) -> None:
    """A clip with 6 objects keeps all 6 with data.max_objects null (training picks a random subset otherwise)."""
    from sam2train.data.datamodule import SAM2LightningDataModule
    from sam2train.data.demo import write_demo_dataset

    write_demo_dataset(tmp_path, videos=2, frames=4, size=(64, 64), objects=6, seed=1, val_videos=1)
    common = [
        f"data.train_path={tmp_path / 'train'}",
        "data.val_path=null",
        "data.clip_length=2",
        "model.image_size=64",
    ]
    for cap, expected in (("null", 6), ("4", 4)):
        cfg = load_config(CONFIGS / "demo.yaml", [*common, f"data.max_objects={cap}"])
        data = SAM2LightningDataModule(cfg)
        data.setup("fit")
        sample = data.train_set[0]
        assert len(sample.object_ids) == expected and sample.masks.shape[1] == expected
        assert sample.masks[0].flatten(1).any(1).all()  # each kept object is there on the first frame


# ------------------------------------------------------------------------------------------- 2-step fits


@pytest.fixture
def one_thread():
    """The fits run torch on one thread: on a small shared machine a second thread mostly waits on the first
    (a 2-step fit took 8 s on one thread and up to 130 s on two under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fit(recipe: Path, data: Path, root: Path, clip_length: int, extra: tuple[str, ...] = ()) -> Path:
    """2 optimizer steps of `recipe` on the demo data with the tiny random SAM 2 at 128 px on the CPU, then
    one validation batch; returns the run folder."""
    cpu = ["model.checkpoint=null", "trainer.accelerator=cpu", "trainer.precision=32"]
    one_step_per_batch = ["trainer.accumulate_grad_batches=1", "trainer.log_every_n_steps=1"]
    extra = (*cpu, *one_step_per_batch, "logging.viz_every_n_epochs=0", *extra)
    args = fit_args(root, *extra, data=data, config=recipe, clip_length=clip_length, steps=2, version="run")
    assert main(args) == 0
    cfg: Config = load_config(recipe)
    return root / cfg.logging.name / "run"


def _logged(run: Path) -> dict[str, list[float]]:
    """metrics.csv as column -> the non-empty values, in order."""
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    cols: dict[str, list[float]] = {k: [] for k in header}
    for line in lines[1:]:
        for key, value in zip(header, line.split(",")):
            if value:
                cols[key].append(float(value))
    return cols


def _check_run(run: Path) -> tuple[dict, dict[str, list[float]]]:
    assert (run / "checkpoints" / "last.ckpt").is_file()
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["global_steps"] == 2
    logged = _logged(run)
    assert len(logged["train/total"]) == 2 and all(math.isfinite(v) for v in logged["train/total"])
    assert logged["train/skipped_steps"][-1] == 0
    assert logged["val/total"] and math.isfinite(logged["val/total"][-1])
    return final, logged


def test_official_recipe_fits_with_sam2_loss_and_correction_clicks(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """2 steps of Meta's recipe; every object prompted with a box or clicks (the recipe's mask half gets no
    corrections), so each clip's frame 0 at least gets its 7 correction clicks."""
    calls: list[int] = []
    original = corrections.Clicker.next_clicks

    def counting(self, gt, high_res_logits):
        calls.append(gt.shape[0])
        return original(self, gt, high_res_logits)

    monkeypatch.setattr(corrections.Clicker, "next_clicks", counting)
    prompts = ["prompts.mask_prob=0.0", "prompts.box_prob=0.5", "prompts.point_prob=0.5"]
    final, logged = _check_run(_fit(OFFICIAL, demo_data, tmp_path, clip_length=3, extra=tuple(prompts)))
    for term in ("mask", "dice", "iou", "class"):
        values = logged[f"train/{term}"]
        assert len(values) == 2 and all(math.isfinite(v) and v >= 0 for v in values), term
    assert not logged.get("train/bce") and not logged.get(
        "train/temporal"
    )  # the sam2train loss is not in use
    clicks = load_config(OFFICIAL).prompts.num_correction_points
    assert len(calls) >= 2 * clicks and len(calls) % clicks == 0, calls  # 7 rounds per corrected frame
    per_group = final["parameters"]["per_group"]
    assert all(per_group[g]["trainable"] == per_group[g]["total"] for g in ALL_GROUPS)


@pytest.mark.parametrize(
    "recipe, frozen, cache",
    [
        (MEMORY_ONLY, ["image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "free_parameters"], True),
        (DECODER_AND_MEMORY, ["image_encoder"], False),
    ],
    ids=["memory_only+cache", "decoder_and_memory"],
)
def test_frozen_encoder_recipe_fits(
    recipe: Path, frozen: list[str], cache: bool, demo_data: Path, tmp_path: Path, one_thread: None
) -> None:
    """2 steps; memory_only with the feature cache on, as docs/recipes.md says to turn it on."""
    extra = ("model.cache_features=true", f"model.cache_dir={tmp_path / 'cache'}") if cache else ()
    final, _ = _check_run(_fit(recipe, demo_data, tmp_path / "runs", clip_length=2, extra=extra))
    per_group = final["parameters"]["per_group"]
    for group in ALL_GROUPS:
        expected = 0 if group in frozen else per_group[group]["total"]
        assert per_group[group]["trainable"] == expected, group
    if cache:
        assert list((tmp_path / "cache").rglob("*.f16"))  # frames of the clips seen were cached


# ------------------------------------------------------------------------------------- shipped recipes (#15)


def test_recipes_ship_inside_the_package() -> None:
    """configs/ in a clone is the package's recipe folder, and pyproject's package data takes every recipe."""
    import sam2train
    from sam2train.config.recipes import RECIPES_DIR, recipe_names

    assert CONFIGS.resolve() == RECIPES_DIR.resolve()
    assert RECIPES_DIR.resolve().parent == Path(sam2train.__file__).resolve().parent
    assert recipe_names() == sorted(p.stem for p in CONFIGS.glob("*.yaml")) and "davis" in recipe_names()
    assert 'sam2train = ["recipes/*.yaml"]' in (REPO / "pyproject.toml").read_text()


def test_recipe_by_name_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Outside the repository: `base: memory_only` in a user's YAML, `--config davis` on the command line; a file
    of that name beside the YAML wins; an unknown name is an error naming it and the shipped recipes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.yaml").write_text("base: memory_only\ndata:\n  train_path: /data/train\n")
    mine = load_config("my.yaml")
    assert mine.model.trainable_modules == MEMORY_GROUPS and mine.data.train_path == "/data/train"
    assert load_config(tmp_path / "my.yaml", ["optimizer.lr=1e-5"]).model == load_config(MEMORY_ONLY).model
    assert load_config("davis") == load_config("davis.yaml") == load_config(CONFIGS / "davis.yaml")
    assert main(["fit", "--config", "decoder_and_memory", "--print-config"]) == 0
    assert "sam_mask_decoder" in capsys.readouterr().out
    (tmp_path / "own").mkdir()
    # a file at the path written wins (`davis.yaml` beside it), a bare name is the shipped recipe
    (tmp_path / "own" / "davis.yaml").write_text("base: davis\ntrainer:\n  max_epochs: 3\n")
    (tmp_path / "own" / "run.yaml").write_text("base: davis.yaml\n")
    run = load_config(tmp_path / "own" / "run.yaml")
    assert run.trainer.max_epochs == 3 and run.model == load_config("davis").model
    (tmp_path / "bad.yaml").write_text("base: memory_onyl\n")
    with pytest.raises(ConfigError) as err:
        load_config("bad.yaml")
    assert "base 'memory_onyl'" in str(err.value) and "'memory_only'" in str(err.value)
    assert main(["fit", "--config", "nope", "--print-config"]) == 2
    assert "nope" in capsys.readouterr().err


def test_recipes_command_lists_each_with_its_first_comment_line(capsys: pytest.CaptureFixture) -> None:
    from sam2train.config.recipes import recipe_names

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == recipe_names()
    for line, path in zip(lines, sorted(CONFIGS.glob("*.yaml"))):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and line.endswith(first[2:]), path.name
        assert len(first) <= 120 and first.rstrip()[-1] in ".)", f"{path.name}: one whole sentence"


@pytest.mark.slow
def test_a_built_wheel_carries_the_recipes(tmp_path: Path) -> None:
    """Build the wheel (no network: this environment's setuptools), unpack it and, from a folder outside the
    repository with only the wheel's copy of sam2train importable, list the recipes and compose one by name."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(
        REPO / "src" / "sam2train", src / "src" / "sam2train", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src)]
    subprocess.run([*pip, "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("sam2train-*.whl"))
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    work = tmp_path / "work"
    work.mkdir()
    (work / "my.yaml").write_text("base: memory_only\n")
    code = (
        "import sam2train, sys; from sam2train.cli import main; from sam2train.config import load_config; "
        "print(sam2train.__file__); print(load_config('my.yaml').model.trainable_modules); "
        "sys.exit(main(['recipes']))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(tmp_path / "site")) and lines[1] == str(MEMORY_GROUPS)
    assert sorted(line.split()[0] for line in lines[2:]) == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
