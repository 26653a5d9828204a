"""`vlaflow <command>`: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch


def _infer(args: argparse.Namespace) -> int:
    from vlaflow.inference.example import load_model, run_example, run_policy_example
    from vlaflow.inference.policy import Policy
    from vlaflow.pretrained import read_config

    trained = args.checkpoint is not None and read_config(args.checkpoint).get("metadata", {}).get(
        "norm_stats"
    )
    if trained:
        policy = Policy.load(args.checkpoint, num_steps=args.steps, seed=args.seed)
        model = policy.model
    else:
        model, tokenizer = load_model(
            checkpoint=args.checkpoint, preset_name=args.preset, tokenizer_path=args.tokenizer, seed=args.seed
        )
    c = model.config
    source = args.checkpoint or f"preset {args.preset} (random weights)"
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {source}: {'pi0.5' if c.pi05 else 'pi0'}, {millions:.1f} M parameters,")
    print(
        f"       {len(c.image_keys)} cameras at {c.vision.image_size} px, action horizon {c.action_horizon}"
    )
    if trained:
        result = run_policy_example(policy, prompt=args.prompt, batch_size=args.batch_size, seed=args.seed)
        units = f"the robot's {policy.action_dim} action dims, its units"
    else:
        result = run_example(
            model, tokenizer, prompt=args.prompt, batch_size=args.batch_size, steps=args.steps, seed=args.seed
        )
        units = f"normalized, padded to action_dim {c.action_dim}: no robot statistics in this model"
    print(f"prompt: {args.prompt!r} -> {result.prompt_tokens} tokens")
    print(
        f"actions: shape {result.actions.shape} ({units}) in {result.seconds * 1e3:.0f} ms "
        f"({args.steps} Euler steps)"
    )
    first = result.actions[0, 0, : min(7, result.actions.shape[-1])]
    print(f"first action (first {len(first)} dims): " + " ".join(f"{v:+.3f}" for v in first))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from vlaflow.interop.openpi import load_pytorch_checkpoint
    from vlaflow.interop.openpi_jax import (
        DEFAULT_FAST_ACTION_DIM,
        MAX_REFERENCE_FAST_TOKENS,
        is_orbax_checkpoint,
        load_jax_checkpoint,
    )
    from vlaflow.interop.openpi_norm import find_norm_stats, openpi_metadata
    from vlaflow.interop.openpi_robots import RobotSettings, robot
    from vlaflow.pretrained import FAST_TOKENIZER_DIR, save_pretrained
    from vlaflow.tokenizers import FastTokenizer, PaliGemmaTokenizer
    from vlaflow.tokenizers.fast import CONFIG_FILE as FAST_CONFIG_FILE

    dtype = getattr(torch, args.dtype)
    metadata: dict[str, Any] = {"converted_from": str(args.checkpoint)}
    trained = robot(args.robot).settings if args.robot else RobotSettings.default
    fast = None
    if args.fast_tokenizer:  # pi0-FAST: its tokenizer decodes chunks of the reference's shape
        fast_settings = trained("pi0_fast")
        recorded = (args.fast_tokenizer / FAST_CONFIG_FILE).is_file()  # ours records its chunk shape
        fast = FastTokenizer.load(
            args.fast_tokenizer,
            action_horizon=args.action_horizon or (None if recorded else fast_settings.action_horizon),
            action_dim=args.action_dim
            or (None if recorded else fast_settings.fast_action_dim or DEFAULT_FAST_ACTION_DIM),
        )
    if is_orbax_checkpoint(args.checkpoint):
        model, detected = load_jax_checkpoint(
            args.checkpoint,
            action_horizon=fast.action_horizon if fast else args.action_horizon,
            max_token_len=args.max_token_len,
            settings=trained,
            action_dim=fast.action_dim if fast else args.action_dim,
            fast_vocab_size=fast.vocab_size if fast else None,
            lora_scale=args.lora_scale,
            dtype=dtype,
        )
        print(f"openpi JAX checkpoint {args.checkpoint}")
        print(detected.summary())
        family = detected.family
        if fast is not None and family != "pi0_fast":
            raise ValueError(f"--fast-tokenizer is for pi0-FAST checkpoints; this one is {family}")
    else:
        if args.pi05 is None:
            raise ValueError("a safetensors checkpoint needs --pi0 or --pi05 (JAX checkpoints are detected)")
        family = "pi05" if args.pi05 else "pi0"
        settings = trained(family)
        model = load_pytorch_checkpoint(
            args.checkpoint,
            pi05=args.pi05,
            paligemma_variant=args.paligemma_variant,
            action_expert_variant=args.action_expert_variant,
            action_horizon=args.action_horizon or settings.action_horizon,
            action_dim=args.action_dim or 32,
            max_token_len=args.max_token_len,
            discrete_state_input=settings.discrete_state_input,
            dtype=dtype,
        )
    config = model.config
    print(
        f"action horizon: {config.action_horizon}, prompt tokens: {config.max_token_len}, state in the "
        f"prompt: {config.discrete_state_input if config.discrete_state_input is not None else config.pi05} "
        "(not stored in the weights: --action-horizon, --max-token-len, --robot)"
    )
    metadata["openpi_family"] = family
    stats_at = args.norm_stats or _assets_beside(args.checkpoint)
    if stats_at is not None:
        file, asset_id = find_norm_stats(stats_at, args.asset_id)
        metadata |= openpi_metadata(
            file,
            asset_id,
            family=family,
            action_horizon=config.action_horizon,
            image_keys=config.image_keys,
            delta_action_mask=trained(family).delta_action_mask,
        )
        print(f"normalization: {metadata['normalization']}, statistics of {asset_id!r} from {file}")
    elif args.robot:
        raise ValueError(f"--robot {args.robot} needs the robot's norm_stats.json (--norm-stats)")
    else:
        print("no norm_stats.json found (--norm-stats): the model has no normalization and cannot act yet")
    if args.robot:
        metadata["robot"] = args.robot
        print(f"robot: {args.robot} (vlaflow serve takes openpi's {args.robot} client's requests)")
    if fast is not None:  # openpi decodes up to 256 tokens
        metadata["train_config"] = {"max_fast_tokens": MAX_REFERENCE_FAST_TOKENS}
    tokenizer = PaliGemmaTokenizer(args.tokenizer) if args.tokenizer else None
    out = save_pretrained(args.output, model, tokenizer=tokenizer, metadata=metadata)
    if fast is not None:
        fast.save(out / FAST_TOKENIZER_DIR)
        print(
            f"FAST tokenizer: vocabulary {fast.vocab_size}, chunks {fast.action_horizon} x {fast.action_dim}"
        )
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters, {args.dtype})")
    return 0


def _assets_beside(checkpoint: Path) -> Path | None:
    """openpi keeps `assets/` next to `params/` (or a converted model.safetensors)."""
    directory = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return directory / "assets" if (directory / "assets").is_dir() else None


def _stats(args: argparse.Namespace) -> int:
    from vlaflow.data.lerobot import LeRobotDataset
    from vlaflow.data.pipeline import SourceConfig, save_stats, source_stats

    mask = tuple(bool(int(v)) for v in args.delta_action_mask.split(",")) if args.delta_action_mask else None
    config = SourceConfig(
        str(args.dataset), state_key=args.state_key, action_key=args.action_key, delta_action_mask=mask
    )
    dataset = LeRobotDataset(
        args.dataset, state_key=args.state_key, action_key=args.action_key, image_keys=[]
    )
    stats = source_stats(dataset, config, args.action_horizon, cameras={})
    for name, feature in (
        ("state", stats.state),
        (f"actions (chunks of {args.action_horizon}, pooled)", stats.actions),
    ):
        print(f"{name}: {feature.count} values per dim")
        print("  dim " + "".join(f"{k:>11}" for k in ("mean", "std", "min", "max", "q01", "q99")))
        for d in range(feature.dim):
            values = [getattr(feature, k)[d] for k in ("mean", "std", "min", "max", "q01", "q99")]
            print(f"  {d:>3} " + "".join(f"{v:>11.4f}" for v in values))
    out = args.output or Path(args.dataset) / "norm_stats.json"
    save_stats(out, {config.name: stats})
    print(f"quantiles are exact (np.quantile, linear interpolation); wrote {out}")
    return 0


def _fast_fit(args: argparse.Namespace) -> int:
    from vlaflow.data.fast_fit import fit_from_datasets
    from vlaflow.data.pipeline import SourceConfig

    r = fit_from_datasets(
        [SourceConfig(str(d)) for d in args.datasets],
        args.output,
        action_horizon=args.action_horizon,
        vocab_size=args.vocab_size,
        scale=args.scale,
        normalization=args.normalization,
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
    )
    print(
        f"fitted on {r.train_chunks} chunks ({r.action_horizon} x {r.action_dim}, {r.normalization} "
        f"normalization); held out {r.heldout_episodes} episodes ({r.heldout_chunks} chunks)"
    )
    print(f"BPE: {r.coefficient_values} coefficient values, {r.bpe_ids} ids of vocab_size {args.vocab_size}")
    print(
        f"tokens per held-out chunk: mean {r.mean_tokens:.1f}, p99 {r.p99_tokens:.1f}; per-dimension "
        f"binning: {r.binning_tokens} ({r.compression:.1f}x more)"
    )
    print(f"round trip (normalized units): RMSE {r.rmse:.4f}, max abs error {r.max_abs_error:.4f}")
    print(
        f"decoding failures: {r.decoding_failures} of {r.heldout_chunks}; "
        f"coefficients clipped to the fitted range: {r.clipped_coefficients}"
    )
    print(f"wrote {r.output} (tokenizer, norm_stats.json, fit_report.json)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from vlaflow.data.pipeline import SourceConfig
    from vlaflow.training.configs import apply_overrides, describe, named_config
    from vlaflow.training.trainer import saved_train_config, train

    config = None
    overrides = list(args.overrides) + ([f"save_every={args.save_every}"] if args.save_every else [])
    saved = saved_train_config(args.output) if args.resume and args.output else None
    if saved is not None and (args.config or overrides or args.dataset):
        # what this command asks for, compared with the run's own settings by the trainer
        config = apply_overrides(named_config(args.config) if args.config else saved, overrides)
        config.datasets = [SourceConfig(str(d)) for d in args.dataset] if args.dataset else saved.datasets
    elif args.config or not args.resume or args.print_config:
        config = named_config(args.config or "pi05_tiny")
        overrides += [f"steps={args.steps}"] if args.steps and not args.resume else []
        config = apply_overrides(config, overrides)
        config.datasets = [SourceConfig(str(d)) for d in args.dataset]
    if args.print_config:
        print(describe(config, named_config(args.config or "pi05_tiny")))
        return 0
    if args.output is None:
        raise ValueError("--output DIR is required (where checkpoints and metrics go)")
    result = train(config, args.output, resume=args.resume, steps=args.steps)
    if result.losses:
        step, loss = result.losses[-1]
        print(f"trained to step {step}: last loss {loss:.4f}; checkpoint {result.checkpoint}")
    return 0


def _ask(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from vlaflow.inference.ask import answer_boxes, ask
    from vlaflow.pretrained import load_pretrained

    loaded = load_pretrained(args.checkpoint)
    if loaded.tokenizer is None:
        raise ValueError(f"{args.checkpoint} names no tokenizer")
    images = []
    for path in args.image:
        with Image.open(path) as image:
            images.append(np.array(image.convert("RGB")))
    answer = ask(loaded.model, loaded.tokenizer, images, args.prompt, max_new_tokens=args.max_tokens)
    print(answer)
    drawn = answer_boxes(images[0], answer)
    if drawn is not None:
        output = args.output or args.image[0].with_name(f"{args.image[0].stem}_answer.png")
        Image.fromarray(drawn).save(output)
        print(f"boxes drawn on {args.image[0]}: {output}")
    return 0


def _families(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def _cameras(args: argparse.Namespace, default: str) -> list[str]:
    return [c.strip() for c in (args.cameras or default).split(",") if c.strip()]


def _generate_tabletop(args: argparse.Namespace) -> int:
    from vlaflow.sim.tabletop.generate import generate_tabletop

    s = generate_tabletop(
        args.output,
        episodes=args.episodes,
        split=args.split,
        seed=args.seed,
        resolution=args.resolution,
        workers=args.workers,
        cameras=_cameras(args, "scene,wrist"),
        skills=args.skills,
        **({"families": _families(args.families)} if args.families else {}),
        verbal_sessions=args.verbal_sessions,
        web_images=args.web_images,
        perturb=args.perturb,
    )
    print(
        f"wrote {s.task_episodes} task episodes and {s.verbal_episodes} verbal-instruction episodes "
        f"({s.verbal_sessions} sessions; {s.frames} frames) and {s.web_samples} web samples to {s.output} "
        f"in {s.seconds:.0f} s; expert success {100 * s.expert_success_rate:.1f}% over {s.attempts} attempts"
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from vlaflow.sim.generate import generate_metaworld
    from vlaflow.sim.metaworld import resolve_tasks

    if args.benchmark == "tabletop":
        return _generate_tabletop(args)
    summary = generate_metaworld(
        args.output,
        tasks=resolve_tasks(args.tasks),
        episodes_per_task=args.episodes_per_task,
        cameras=_cameras(args, "corner2"),
        resolution=args.resolution,
        workers=args.workers,
        seed=args.seed,
    )
    print(
        f"wrote {summary.episodes} episodes ({summary.frames} frames) to {summary.output} "
        f"in {summary.seconds:.0f} s; expert success {100 * summary.expert_success_rate:.1f}% "
        f"over {summary.attempts} attempts"
    )
    return 0


def _eval_tabletop(args: argparse.Namespace) -> int:
    from vlaflow.sim.tabletop.evaluate import evaluate_tabletop
    from vlaflow.sim.tabletop.tasks import FAMILIES

    results = evaluate_tabletop(
        args.output,
        policy=_eval_policy(args),
        split=args.split,
        episodes=args.episodes,
        families=_families(args.families) if args.families else FAMILIES,
        seed=args.seed,
        workers=args.workers,
        resolution=args.resolution,
        videos=args.videos_per_task,
        steps_per_chunk=args.steps_per_chunk,
        cameras=_cameras(args, "") or None,
        mode=args.mode,
        subtask_every=args.subtask_every,
        web_images=args.web_images,
        skills=args.skills,
    )
    settings = results["settings"]
    print(
        f"rendered at {settings['resolution']} px, cameras {', '.join(settings['cameras'])}, "
        f"{settings['skills']} skills"
    )
    print(
        f"{'':>20}  {'progress':>17}  {'success':>17}  {'language following':>18}  {'subtask accuracy':>17}"
        f"  {'wrong target':>17}"
    )
    rows = {**results["families"], "overall": results["overall"]}
    rows |= {f"  {name}": r for name, r in results.get("commands", {}).items()}
    for name, r in rows.items():
        cells = [
            f"{100 * b[stat]:5.1f} [{100 * b['ci95'][0]:4.0f}, {100 * b['ci95'][1]:3.0f}]" if b else "-"
            for b, stat in (
                (r["progress"], "mean"),
                (r["success"], "rate"),
                (r["language_following"], "mean"),
                (r.get("subtask_accuracy", {}).get("normalized"), "mean"),
                (r.get("wrong_target"), "rate"),
            )
        ]
        print(
            f"{name:>20}  {cells[0]:>17}  {cells[1]:>17}  {cells[2]:>18}  {cells[3]:>17}  {cells[4]:>17}  "
            f"({r['episodes']} episodes)"
        )
    if "web" in results:
        for kind, w in {**results["web"]["kinds"], "overall": results["web"]["overall"]}.items():
            low, high = w["ci95"]
            print(
                f"web {kind:>16}: {100 * w['rate']:5.1f}% [{100 * low:.0f}, {100 * high:.0f}] "
                f"({w['correct']}/{w['samples']})"
            )
    print(f"percent, 95% intervals; results, chart and videos in {args.output}")
    return 0


def _eval_policy(args: argparse.Namespace) -> object:
    """What `vlaflow eval` runs: the expert, a checkpoint in this process, or a policy server."""
    import os

    from vlaflow.inference.server import TOKEN_ENV
    from vlaflow.sim.evaluate import ServerPolicyFactory

    if args.server:
        return ServerPolicyFactory(args.server, args.token or os.environ.get(TOKEN_ENV) or None)
    return "expert" if args.policy else str(args.checkpoint)


def _eval(args: argparse.Namespace) -> int:
    from vlaflow.sim.evaluate import evaluate_metaworld
    from vlaflow.sim.metaworld import resolve_tasks

    if sum(x is not None for x in (args.checkpoint, args.policy, args.server)) != 1:
        raise ValueError("give exactly one of --checkpoint DIR, --policy expert or --server ws://HOST:PORT")
    if args.benchmark == "tabletop":
        return _eval_tabletop(args)
    if args.mode != "implicit" or args.web_images:
        raise ValueError("--mode and --web-images are for the tabletop (Meta-World data has no subtasks)")
    results = evaluate_metaworld(
        args.output,
        policy=_eval_policy(args),
        tasks=resolve_tasks(args.tasks),
        episodes_per_task=args.episodes_per_task,
        steps_per_chunk=args.steps_per_chunk,
        workers=args.workers,
        seed=args.seed,
        resolution=args.resolution,
        cameras=_cameras(args, "") or None,
        videos_per_task=args.videos_per_task,
    )
    settings = results["settings"]
    print(f"rendered at {settings['resolution']} px, cameras {', '.join(settings['cameras'])}")
    for task, r in results["tasks"].items():
        print(f"{task:>32}: {100 * r['success_rate']:5.1f}%  ({r['successes']}/{r['episodes']})")
    for name, r in {**results["groups"], "overall": results["overall"]}.items():
        print(f"{name:>32}: {100 * r['success_rate']:5.1f}%  ({r['tasks']} tasks, {r['episodes']} episodes)")
    print(f"results, chart and videos in {args.output}")
    return 0


_DEMO_OPTIONS = (
    "episodes_per_task",
    "resolution",
    "steps",
    "batch_size",
    "eval_episodes_per_task",
    "workers",
)
_TABLETOP_DEMO_OPTIONS = ("families", "episodes", "eval_episodes", "skills")


def _demo_tabletop(args: argparse.Namespace) -> int:
    from vlaflow.demo import TabletopDemoConfig, run_tabletop_demo, tabletop_report
    from vlaflow.sim.tabletop.generate import TASK_FAMILIES

    wrong = [o for o in ("tasks", "episodes_per_task", "eval_episodes_per_task") if getattr(args, o)]
    if wrong:
        raise ValueError(f"{', '.join('--' + o.replace('_', '-') for o in wrong)}: Meta-World options")
    output = args.output or Path("demo-tabletop")
    options = {
        "episodes": args.episodes,
        "eval_episodes": args.eval_episodes,
        **{k: getattr(args, k) for k in ("resolution", "steps", "batch_size", "workers", "skills")},
    }
    if args.families:
        families = tuple(args.families.split(","))
        unknown = [f for f in families if f not in TASK_FAMILIES]
        if unknown:
            raise ValueError(f"--families {unknown}: expected task families among {list(TASK_FAMILIES)}")
        options["families"] = families
    summary = run_tabletop_demo(
        output, TabletopDemoConfig(**{k: v for k, v in options.items() if v is not None})
    )
    print(tabletop_report(summary))
    print(
        f"videos {output / 'eval' / '{train,ood}' / 'videos'}, charts {output / 'eval' / '{train,ood}'}, "
        f"loss curve {output / 'run' / 'loss.png'}, checkpoint {summary['checkpoint']}"
    )
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from vlaflow.sim.tabletop.ablations import CHART_FILE, REPORT_FILE, ablation_report, run_ablations

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1") from None
    summary = run_ablations(
        args.output,
        dataset=args.dataset,
        seeds=seeds,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_episodes=args.eval_episodes,
        families=args.families.split(",") if args.families else None,
        workers=args.workers,
        extra_overrides=args.overrides,
        variants=args.variants.split(",") if args.variants else None,
        videos=args.videos,
        web_images=args.web_images,
    )
    print(ablation_report(summary))
    print(f"report {args.output / REPORT_FILE}, chart {args.output / CHART_FILE}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vlaflow.demo import DemoConfig, run_demo
    from vlaflow.sim.metaworld import resolve_tasks
    from vlaflow.sim.tabletop.evaluate import wilson_interval

    if args.benchmark == "tabletop":
        return _demo_tabletop(args)
    wrong = [f"--{k.replace('_', '-')}" for k in _TABLETOP_DEMO_OPTIONS if getattr(args, k) is not None]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: tabletop options (vlaflow demo tabletop)")
    args.output = args.output or Path("demo")
    config = DemoConfig(
        **({"tasks": tuple(resolve_tasks(args.tasks))} if args.tasks else {}),
        **{k: v for k in _DEMO_OPTIONS if (v := getattr(args, k)) is not None},
    )
    summary = run_demo(args.output, config)
    for task, rate in summary["tasks"].items():
        print(f"{task:>28}: {100 * rate:5.1f}%")
    minutes = {k: f"{v / 60:.1f}" for k, v in summary["seconds"].items()}
    successes = round(summary["success_rate"] * summary["episodes"])
    low, high = wilson_interval(successes, summary["episodes"])
    print(
        f"success rate {100 * summary['success_rate']:.1f}% ({successes}/{summary['episodes']} episodes, "
        f"95% interval {100 * low:.0f}-{100 * high:.0f}%); "
        f"{minutes['total']} min (generate {minutes['generate']}, train {minutes['train']}, "
        f"evaluate {minutes['evaluate']})"
    )
    print(
        f"chart {args.output / 'eval' / 'success.png'}, videos {args.output / 'eval' / 'videos'}, "
        f"loss curve {args.output / 'run' / 'loss.png'}, checkpoint {summary['checkpoint']}"
    )
    return 0


def _rtc_config(args: argparse.Namespace) -> object:
    """The real-time chunking settings `--rtc` / `--rtc-beta` ask for (None: no RTC)."""
    from vlaflow.inference.rtc import RTCConfig

    if not args.rtc:
        if args.rtc_beta is not None:
            raise ValueError("--rtc-beta is a setting of --rtc: give both")
        return None
    return RTCConfig() if args.rtc_beta is None else RTCConfig(beta=args.rtc_beta)


def _add_mode_options(parser: argparse.ArgumentParser, help: str) -> None:
    """`--mode` and `--subtask-every`: how a checkpoint conditions its actions on subtasks."""
    parser.add_argument(
        "--mode", choices=["implicit", "hierarchical", "oracle"], default="implicit", help=help
    )
    parser.add_argument(
        "--subtask-every", type=int, default=1, help="hierarchical: decode the subtask every N chunks"
    )


def _add_skills_option(parser: argparse.ArgumentParser, default: str | None, default_help: str) -> None:
    parser.add_argument(
        "--skills",
        choices=["physical", "assisted"],
        default=default,
        help="tabletop: friction grasps (physical, the hard benchmark) or forgiving grasps of objects and "
        f"handles (assisted: learnable in CPU-minutes; docs/benchmarks/tabletop.md); default: {default_help}",
    )


def _serve(args: argparse.Namespace) -> int:
    import logging
    import os

    from vlaflow.inference.policy import Policy
    from vlaflow.inference.server import TOKEN_ENV, ServerConfig, server_for_policy
    from vlaflow.interop.openpi_robots import robot
    from vlaflow.pretrained import read_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = {
        k: v
        for k in ("max_frame_bytes", "batch_window_ms", "max_batch", "max_connections")
        if (v := getattr(args, k)) is not None
    }
    if args.idle_timeout is not None:
        limits["idle_timeout_s"] = args.idle_timeout or None
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    config = ServerConfig(host=args.host, port=args.port, token=token, **limits)
    policy = Policy.load(
        args.checkpoint,
        source=args.source,
        device=args.device,
        num_steps=args.num_steps,
        rtc=_rtc_config(args),
        mode=args.mode,
        subtask_every=args.subtask_every,
    )
    metadata = read_config(args.checkpoint)["metadata"]
    robot_name = args.robot or metadata.get("robot")
    if robot_name is not None and args.key_map is not None:
        raise ValueError("--key-map and --robot both rename the client's keys: give one")
    server_for_policy(
        policy,
        metadata,
        config=config,
        source=args.source,
        key_map=args.key_map,
        robot=robot(robot_name) if robot_name else None,
        default_prompt=args.default_prompt or metadata.get("serving", {}).get("default_prompt"),
    ).run()
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (omitted where there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _command(commands: argparse._SubParsersAction, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlaflow", description="pi0 / pi0.5 vision-language-action models")
    commands = parser.add_subparsers(dest="command", required=True)

    infer = _command(
        commands, "infer", "one inference on a synthetic observation (tiny random model by default)"
    )
    infer.add_argument("--preset", default="pi05_tiny", help="model preset when no --checkpoint is given")
    infer.add_argument("--checkpoint", type=Path, help="a vlaflow model directory")
    infer.add_argument("--tokenizer", type=Path, help="PaliGemma tokenizer.model (for full-size models)")
    infer.add_argument("--prompt", default="pick up the red block and put it in the bowl", help="task prompt")
    infer.add_argument("--batch-size", type=int, default=1, help="observations in the batch")
    infer.add_argument("--steps", type=int, default=10, help="Euler steps of the flow")
    infer.add_argument("--seed", type=int, default=0, help="seed of the weights (preset), images and noise")
    infer.set_defaults(run=_infer)

    ask_command = _command(
        commands, "ask", "ask a trained model about images: captions, VQA, detection (boxes drawn)"
    )
    ask_command.add_argument("--checkpoint", type=Path, required=True, help="a trained model directory")
    ask_command.add_argument(
        "--image", type=Path, action="append", required=True, help="an image (repeat: one per camera slot)"
    )
    ask_command.add_argument("--prompt", required=True, help='e.g. "caption en", "detect red cup"')
    ask_command.add_argument(
        "--output", type=Path, help="where boxes are drawn (default: next to the first image, *_answer.png)"
    )
    ask_command.add_argument("--max-tokens", type=int, default=64, help="longest answer in tokens")
    ask_command.set_defaults(run=_ask)

    convert = _command(
        commands,
        "convert",
        "openpi JAX checkpoint or openpi / LeRobot model.safetensors -> vlaflow model directory",
    )
    convert.add_argument(
        "checkpoint",
        type=Path,
        help="openpi JAX checkpoint (a directory with params/, or a training step directory; family and "
        "sizes are detected), or model.safetensors / a directory holding one",
    )
    convert.add_argument("--output", type=Path, required=True, help="model directory to write")
    variant = convert.add_mutually_exclusive_group()
    variant.add_argument("--pi05", dest="pi05", action="store_true", help="a pi0.5 safetensors checkpoint")
    variant.add_argument("--pi0", dest="pi05", action="store_false", help="a pi0 safetensors checkpoint")
    convert.set_defaults(pi05=None)
    convert.add_argument("--paligemma-variant", default="gemma_2b", help="VLM size: gemma_2b or dummy")
    convert.add_argument("--action-expert-variant", default="gemma_300m", help="expert: gemma_300m or dummy")
    convert.add_argument(
        "--action-horizon",
        type=int,
        help="actions per chunk (default: the robot's in the reference, else 50)",
    )
    convert.add_argument(
        "--action-dim", type=int, help="padded state/action width (default 32; pi0-FAST: the robot's)"
    )
    convert.add_argument(
        "--fast-tokenizer",
        type=Path,
        help="a pi0-FAST checkpoint's FAST tokenizer: a local copy of physical-intelligence/fast or a "
        "vlaflow FAST tokenizer directory",
    )
    convert.add_argument(
        "--max-token-len", type=int, help="prompt tokens (default: 48 pi0 / 200 pi0.5 / 250 pi0-FAST)"
    )
    convert.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights dtype")
    convert.add_argument("--tokenizer", type=Path, help="PaliGemma tokenizer.model to record with the model")
    convert.add_argument(
        "--norm-stats",
        type=Path,
        help="openpi's norm_stats.json, its asset directory or an assets/ directory (default: the "
        "checkpoint's own assets/); quantile normalization for pi0.5 and pi0-FAST, z-score for pi0",
    )
    convert.add_argument("--asset-id", help="which asset's statistics, where assets/ holds several")
    convert.add_argument(
        "--lora-scale",
        type=float,
        default=1.0,
        help="alpha / rank of a LoRA fine-tune's attention adapters, folded into the weights (openpi's: 1)",
    )
    convert.add_argument(
        "--robot",
        help="libero, droid or aloha: record what the reference trained this robot's models with (delta "
        "actions, chunk length, state in the prompt) and serve openpi's client for it",
    )
    convert.set_defaults(run=_convert)

    stats = _command(commands, "stats", "normalization statistics of a LeRobot dataset's state and actions")
    stats.add_argument("dataset", type=Path, help="a LeRobot dataset directory")
    stats.add_argument("--action-horizon", type=int, default=50, help="chunk length pooled for action stats")
    stats.add_argument("--state-key", default="observation.state", help="state feature")
    stats.add_argument("--action-key", default="action", help="action feature")
    stats.add_argument("--delta-action-mask", help="comma-separated 0/1 per action dim, e.g. 1,1,1,1,1,1,0")
    stats.add_argument("--output", type=Path, help="JSON file (default: DATASET/norm_stats.json)")
    stats.set_defaults(run=_stats)

    fast = _command(commands, "fast", "FAST action tokenizers (DCT + BPE) for discrete action tokens")
    fast_commands = fast.add_subparsers(dest="fast_command", required=True)
    fast_fit = _command(
        fast_commands,
        "fit",
        "fit on LeRobot datasets' normalized action chunks; measure on held-out episodes",
    )
    fast_fit.add_argument("datasets", type=Path, nargs="+", metavar="DATASET", help="LeRobot datasets")
    fast_fit.add_argument("--output", type=Path, required=True, help="tokenizer directory to write")
    fast_fit.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    fast_fit.add_argument("--scale", type=float, default=10.0, help="DCT coefficients x scale, rounded")
    fast_fit.add_argument("--action-horizon", type=int, default=50, help="chunk length H")
    fast_fit.add_argument(
        "--normalization", choices=["quantile", "zscore"], default="quantile", help="action normalization"
    )
    fast_fit.add_argument("--holdout-fraction", type=float, default=0.1, help="episodes held out per dataset")
    fast_fit.add_argument("--seed", type=int, default=0, help="which episodes are held out")
    fast_fit.set_defaults(run=_fast_fit)

    generate = _command(commands, "generate", "demonstration datasets from scripted experts (LeRobot v3.0)")
    generate.add_argument("benchmark", choices=["metaworld", "tabletop"], help="which simulator")
    generate.add_argument("--tasks", default="mt10", help="mt50, mt10, easy/medium/hard/very_hard, or names")
    generate.add_argument("--episodes-per-task", type=int, default=50, help="Meta-World: episodes per task")
    generate.add_argument("--episodes", type=int, default=100, help="tabletop: task episodes in all")
    generate.add_argument("--split", choices=["train", "ood"], default="train", help="tabletop scenes")
    generate.add_argument("--output", type=Path, required=True, help="dataset directory to write")
    generate.add_argument(
        "--cameras", help="comma-separated cameras (default: corner2 / tabletop: scene,wrist)"
    )
    generate.add_argument("--resolution", type=int, default=224, help="camera images are N x N pixels")
    generate.add_argument("--workers", type=int, help="parallel simulator processes (default: all CPUs)")
    generate.add_argument("--seed", type=int, default=0, help="episode seeds start here")
    generate.add_argument("--families", help="tabletop: task families, comma-separated (default: all)")
    generate.add_argument(
        "--verbal-sessions", type=int, help="tabletop: verbal-instruction sessions (default: episodes / 5)"
    )
    generate.add_argument(
        "--web-images", type=int, help="tabletop: scenes rendered for web samples (default: episodes)"
    )
    generate.add_argument(
        "--perturb",
        type=float,
        default=0.0,
        help="tabletop: the executed motion drifts by about this much (metres per step) while the expert's "
        "corrections are recorded (noise injection: demonstrations that show how to recover)",
    )
    _add_skills_option(generate, "physical", "physical")
    generate.set_defaults(run=_generate)

    evaluate = _command(commands, "eval", "success rates of a policy in simulation, with a chart and videos")
    evaluate.add_argument("benchmark", choices=["metaworld", "tabletop"], help="which simulator")
    evaluate.add_argument("--checkpoint", type=Path, help="a trained model directory")
    evaluate.add_argument("--policy", choices=["expert"], help="run the scripted experts instead")
    evaluate.add_argument(
        "--server", help="evaluate through a running `vlaflow serve` (ws://HOST:PORT), not a checkpoint"
    )
    evaluate.add_argument("--token", help="the server's token (default: $VLAFLOW_SERVER_TOKEN, or none)")
    evaluate.add_argument("--tasks", default="mt10", help="Meta-World: mt50, mt10, a difficulty, or names")
    evaluate.add_argument("--episodes-per-task", type=int, default=10, help="Meta-World: episodes per task")
    evaluate.add_argument("--split", choices=["train", "ood"], default="ood", help="tabletop scenes")
    evaluate.add_argument("--episodes", type=int, default=20, help="tabletop: episodes per task family")
    evaluate.add_argument("--families", help="tabletop: comma-separated task families (default: all)")
    evaluate.add_argument(
        "--cameras", help="comma-separated cameras (default: the checkpoint's training cameras)"
    )
    evaluate.add_argument("--output", type=Path, required=True, help="results directory to write")
    evaluate.add_argument("--steps-per-chunk", type=int, default=5, help="actions executed per inference")
    evaluate.add_argument("--workers", type=int, help="parallel simulator processes (default: all CPUs)")
    evaluate.add_argument("--seed", type=int, default=1_000_000, help="episode seeds start here")
    evaluate.add_argument(
        "--resolution", type=int, help="render N x N (default: the checkpoint's training resolution; 224)"
    )
    evaluate.add_argument("--videos-per-task", type=int, default=2, help="rollout videos kept per task")
    _add_mode_options(
        evaluate,
        "tabletop, a checkpoint: the prompt alone conditions the actions (implicit), the model "
        "decodes the subtask first (hierarchical), or the plan step in force is given (oracle)",
    )
    evaluate.add_argument(
        "--web-images",
        type=int,
        default=0,
        help="tabletop, a checkpoint: also ask the questions of N held-out web images of the split",
    )
    _add_skills_option(evaluate, None, "the checkpoint's training data's, else physical")
    evaluate.set_defaults(run=_eval)

    demo = _command(
        commands,
        "demo",
        "the main job: demonstrations -> a tiny pi0.5 trained on the CPU -> evaluation (Meta-World: "
        "success rate; tabletop: hierarchical pi0.5 co-trained on every kind of data)",
    )
    demo.add_argument(
        "benchmark", nargs="?", choices=["metaworld", "tabletop"], default="metaworld", help="which simulator"
    )
    demo.add_argument(
        "--output", type=Path, help="where everything goes; rerun to resume (default: demo / demo-tabletop)"
    )
    demo.add_argument("--tasks", help="Meta-World task names, comma-separated (default: three easy tasks)")
    demo.add_argument(
        "--episodes-per-task", type=int, help="Meta-World: demonstrations per task (default: 20)"
    )
    demo.add_argument("--families", help="tabletop: task families, comma-separated (default: two)")
    demo.add_argument("--episodes", type=int, help="tabletop: task episodes (default: 200)")
    demo.add_argument(
        "--resolution", type=int, help="camera resolution of data and evaluation (default: 112)"
    )
    demo.add_argument("--steps", type=int, help="training steps (default: 1500; tabletop 1100)")
    demo.add_argument("--batch-size", type=int, help="training batch size (default: 32)")
    demo.add_argument(
        "--eval-episodes-per-task", type=int, help="Meta-World: evaluation episodes per task (default: 10)"
    )
    demo.add_argument(
        "--eval-episodes", type=int, help="tabletop: evaluation episodes per family and split (default: 20)"
    )
    _add_skills_option(demo, None, "assisted")
    demo.add_argument("--workers", type=int, help="simulator processes (default: all CPUs)")
    demo.set_defaults(run=_demo)

    ablate = _command(
        commands,
        "ablate",
        "the pi0.5 paper's ablations in miniature: train each variant's run per seed, evaluate every "
        "variant on both splits, report with intervals (rerun to continue)",
        epilog="Any number of key=value training settings may follow; they change every run alike.",
    )
    ablate.add_argument("benchmark", choices=["tabletop"], help="which simulator")
    ablate.add_argument("--dataset", type=Path, required=True, help="a `vlaflow generate tabletop` directory")
    ablate.add_argument(
        "--output", type=Path, required=True, help="where runs, evaluations and the report go"
    )
    ablate.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ablate.add_argument("--steps", type=int, default=1_200, help="training steps of every run")
    ablate.add_argument("--batch-size", type=int, default=16, help="training batch size of every run")
    ablate.add_argument("--eval-episodes", type=int, default=10, help="episodes per family, split and seed")
    ablate.add_argument("--families", help="task families to evaluate (default: those the dataset trains)")
    ablate.add_argument("--variants", help="comma-separated subset (default: all six)")
    ablate.add_argument("--workers", type=int, help="simulator processes (default: all CPUs)")
    ablate.add_argument("--videos", type=int, default=1, help="videos per family of each evaluation")
    ablate.add_argument(
        "--web-images",
        type=int,
        default=0,
        help="also ask every run the questions of N held-out web images per split and seed",
    )
    ablate.set_defaults(run=_ablate)

    train = _command(
        commands,
        "train",
        "train or fine-tune on LeRobot datasets (torchrun for many GPUs)",
        epilog="Any number of key=value settings may follow, e.g. batch_size=8 optim.peak_lr=1e-4; "
        "--print-config lists them all with their defaults.",
    )
    train.add_argument(
        "--config",
        help="named config: pi05_tiny (default), pi0_tiny, pi05_full, pi0_full, pi05_full_lora, "
        "pi0fast_tiny, pi0fast_full, pi05_ki_{tiny,full}_stage{1,2}, pi05_tabletop_tiny, pi05_tabletop_full",
    )
    train.add_argument(
        "--dataset", type=Path, action="append", default=[], help="a LeRobot dataset (repeat to mix)"
    )
    train.add_argument("--output", type=Path, help="run directory: checkpoints, metrics.jsonl, loss.png")
    train.add_argument("--steps", type=int, help="total steps (default: the config's; extends a resumed run)")
    train.add_argument("--save-every", type=int, help="steps between checkpoints (default: the config's)")
    train.add_argument(
        "--resume", action="store_true", help="continue from the last complete checkpoint in --output"
    )
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print every setting as resolved, with its default and use",
    )
    train.set_defaults(run=_train)

    serve = _command(
        commands, "serve", "serve a checkpoint to robots over WebSocket (openpi's protocol); SIGTERM stops it"
    )
    serve.add_argument("--checkpoint", type=Path, required=True, help="a trained model directory")
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (use --token)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument("--num-steps", type=int, default=10, help="Euler steps per inference")
    serve.add_argument("--token", help="token clients must present (default: $VLAFLOW_SERVER_TOKEN, or none)")
    serve.add_argument("--max-frame-bytes", type=int, help="largest request decoded (default: 16 MiB)")
    serve.add_argument("--batch-window-ms", type=float, help="wait this long to batch clients (default: 10)")
    serve.add_argument("--max-batch", type=int, help="most requests in one model call (default: 8)")
    serve.add_argument(
        "--max-connections", type=int, help="clients served at once; more get 503 (default: 32)"
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        help="close a connection silent this many seconds; 0: never (default: 600)",
    )
    serve.add_argument(
        "--key-map",
        help='client key -> dataset key: JSON (\'{"observation/image": "observation.images.top"}\'), a .json '
        "file, or libero (default: the checkpoint's own, else the dataset's names)",
    )
    serve.add_argument("--source", help="which training dataset's statistics, for a mixture")
    serve.add_argument(
        "--robot",
        help="libero, droid or aloha: take requests and send actions as openpi's example client for "
        "this robot does (default: the robot a converted checkpoint records)",
    )
    serve.add_argument("--default-prompt", help="the prompt of requests that carry none (e.g. ALOHA's)")
    serve.add_argument(
        "--rtc",
        action="store_true",
        help="real-time chunking: guide each chunk toward the request's prev_actions / inference_delay",
    )
    serve.add_argument("--rtc-beta", type=float, help="RTC's guidance weight clip (default: 10)")
    _add_mode_options(
        serve,
        "the prompt alone conditions the actions (implicit), the model decodes the subtask first and "
        "replies with it (hierarchical), or each request carries the subtask in force (oracle)",
    )
    serve.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    serve.set_defaults(run=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad or (extra and args.command not in ("train", "ablate")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    args.overrides = extra
    warnings.formatwarning = lambda message, *_, **__: f"vlaflow {args.command}: warning: {message}\n"
    try:
        return args.run(args)
    except (ValueError, OSError, ImportError) as error:  # incl. missing files, a full disk, a missing extra
        print(f"vlaflow {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
