"""The training loop: one trainer from a CPU to many GPUs, resumable exactly.

Everything random about a training sample (which frame, its augmentation, its flow noise and
time) derives from the seed and the sample's global number, and the model's forward is
deterministic on a CPU; with the optimizer, EMA and step restored from a checkpoint, a run killed
at any point and resumed logs the same losses, step for step, as one that never stopped.

The loss is the flow-matching MSE averaged over real action elements only (padded action
dimensions and chunk steps past an episode's end carry no loss); `loss_reduction="reference"`
averages over every element instead, as the reference does. Averaging is global: each process
divides its sum by the element count of the whole global batch, so one process and N processes
compute the same gradient.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vlaflow.data.lerobot import LeRobotMeta
from vlaflow.data.mixture import WebSamples, frame_kinds
from vlaflow.data.pipeline import (
    ActionTokens,
    Batch,
    Source,
    SourceConfig,
    SourceStats,
    TrainingSamples,
    collate,
    save_stats,
)
from vlaflow.data.sampling import SampleKey, StepSampler, mixture_weights
from vlaflow.models import VLA, VLAConfig, preset
from vlaflow.models.presets import EMBEDDED_VOCAB_SIZE
from vlaflow.models.vla import FLOAT32_HEADS
from vlaflow.pretrained import FAST_TOKENIZER_DIR, load_pretrained, read_config
from vlaflow.tokenizers import EmbeddedTokenizer, FastIdRange, FastTokenizer, PaliGemmaTokenizer, Tokenizer
from vlaflow.training.checkpoint import complete_checkpoints, latest_checkpoint, load_latest, save_checkpoint
from vlaflow.training.configs import TrainConfig, resume_changes
from vlaflow.training.distributed import (
    Runtime,
    all_reduce_sum,
    full_model_state,
    full_optimizer_state,
    init_runtime,
    load_optimizer_state,
    parallelize,
    shut_down,
)
from vlaflow.training.lora import apply_lora, freeze, lora_scales, merged_state
from vlaflow.training.losses import batch_targets, term_sums, weighted_total
from vlaflow.training.optim import EMA, build_optimizer, learning_rate

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
# Validation samples are numbered from here, far past any training sample, so their flow noise and
# time (derived from the number) never coincide with a training sample's.
VALIDATION_IDS = 2**40


@dataclass
class TrainResult:
    output: Path
    steps: int
    checkpoint: Path
    losses: list[tuple[int, float]]


def train(
    config: TrainConfig | None,
    output: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or, with `resume`, continue from the last complete checkpoint in `output`).

    On resume the saved configuration is used (`config` may be None); `steps` extends the run.
    """
    runtime = init_runtime(config.device if config else None)
    try:
        return Trainer(config, Path(output), runtime, resume=resume, steps=steps, progress=progress).run()
    finally:
        shut_down(runtime)


def saved_train_config(output: str | Path) -> TrainConfig | None:
    """The training settings of the last complete checkpoint in `output` (None: there is none)."""
    for _, path in reversed(complete_checkpoints(Path(output))):
        try:
            return TrainConfig.from_dict(read_config(path)["metadata"]["train_config"])
        except (OSError, ValueError, KeyError):  # damaged: the trainer skips it too, with a warning
            continue
    return None


def _batches(loader: Iterable[Batch]) -> Iterator[Batch]:
    """The loader's batches; a data error raised in a loader process keeps just its own message
    (PyTorch re-raises it with the worker's traceback written into the text)."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (ValueError, OSError) as error:
            text = str(error).strip()
            if "Original Traceback" not in text:
                raise
            raise type(error)(text.splitlines()[-1].split(": ", 1)[-1]) from None
        yield batch


def flow_inputs(ids: Tensor, horizon: int, dim: int, seed: int, draws: int = 1) -> tuple[Tensor, Tensor]:
    """Per-sample flow noise (B, H, D) and time t ~ Beta(1.5, 1) * 0.999 + 0.001 (B,), from the
    sample's global number: the same sample gets the same draw in any process, at any resume.
    `draws` > 1: (B, K, H, D) and (B, K), the first of them the single draw's."""
    noise, times = [], []
    for n in ids.tolist():
        rng = np.random.default_rng([seed, n, 2])
        for _ in range(draws):
            noise.append(rng.standard_normal((horizon, dim), dtype=np.float32))
            times.append(rng.beta(1.5, 1.0) * 0.999 + 0.001)
    noise_t, time_t = torch.from_numpy(np.stack(noise)), torch.tensor(times, dtype=torch.float32)
    if draws == 1:
        return noise_t, time_t
    return noise_t.reshape(len(ids), draws, horizon, dim), time_t.reshape(len(ids), draws)


def _tokenizer(config: TrainConfig, model: VLAConfig, pretrained_tokenizer: Tokenizer | None) -> Tokenizer:
    if config.tokenizer:
        return PaliGemmaTokenizer(config.tokenizer)
    if pretrained_tokenizer is not None:
        return pretrained_tokenizer
    if model.vocab_size == EMBEDDED_VOCAB_SIZE:
        return EmbeddedTokenizer()
    raise ValueError(f"model vocab_size {model.vocab_size} needs the PaliGemma tokenizer: set tokenizer=PATH")


class Trainer:
    def __init__(
        self,
        config: TrainConfig | None,
        output: Path,
        runtime: Runtime,
        *,
        resume: bool,
        steps: int | None,
        progress: bool,
    ):
        self.output, self.runtime, self.progress = output, runtime, progress
        existing = latest_checkpoint(output)
        if existing is not None and not resume:
            raise ValueError(
                f"{output} already holds checkpoints (latest: {existing.name}); pass --resume to continue "
                "it or choose another --output"
            )
        self.state = None
        if resume and existing is not None:
            found = load_latest(output, warn=warnings.warn)
            if found is None:
                raise ValueError(f"{output}: no checkpoint there can be loaded (see the warnings above)")
            self.state = found[1]
        if self.state is not None:
            saved = TrainConfig.from_dict(self.state["config"]["metadata"]["train_config"])
            changes = resume_changes(saved, config) if config is not None else []
            config = config or saved
            if changes and runtime.main:
                print(f"resuming {output} with changed settings: {'; '.join(changes)}")
        elif config is None:
            raise ValueError(f"nothing to resume in {output}: give a training config")
        if steps is not None:
            config = replace(config, steps=steps)
        if not config.datasets:
            raise ValueError("no datasets: give at least one --dataset DIR")
        self.config = config
        self.start = self.state["trainer_state"]["step"] if self.state else 0
        if self.start >= config.steps:
            raise ValueError(
                f"the checkpoint is at step {self.start} and the run has {config.steps} steps: use --steps"
            )

        pretrained = load_pretrained(config.init) if config.init and self.state is None else None
        base = VLAConfig.from_dict(self.state["config"]["model"]) if self.state else None
        model_config = base or (pretrained.model.config if pretrained else preset(config.model))
        if not self.state:
            model_config = model_config.replace(**config.model_overrides)
        self.model_config = model_config
        self.tokenizer = _tokenizer(config, model_config, pretrained.tokenizer if pretrained else None)
        self.normalization = config.normalization or ("quantile" if model_config.pi05 else "zscore")
        saved_stats = self.state["config"]["metadata"]["norm_stats"] if self.state else {}
        names = [Path(d.path).name for d in config.datasets]
        if len(set(names)) != len(names):
            raise ValueError("datasets must have distinct directory names (they name the statistics)")
        self.held_out = held_out_episodes(config)
        self.sources, self.val_sources = [], []
        for source_config in config.datasets:
            sc = self._with_overrides(source_config)
            stats = SourceStats.from_dict(saved_stats[sc.name]) if sc.name in saved_stats else None
            held_out = self.held_out.get(sc.name, [])
            kept = None
            if held_out:
                kept = [e for e in LeRobotMeta(sc.path).episode_indices if e not in held_out]
                if not kept:
                    raise ValueError(f"{sc.path}: every episode is held out for validation")
            source = Source(sc, model_config, normalization=self.normalization, stats=stats, episodes=kept)
            self.sources.append(source)
            if held_out:  # normalized with the training episodes' statistics
                self.val_sources.append(
                    Source(
                        sc,
                        model_config,
                        normalization=self.normalization,
                        stats=source.stats,
                        episodes=held_out,
                    )
                )
        self.mixture = self._mixture(self.sources, web=True)
        self.val_mixture = self._mixture(self.val_sources, web=False)
        if not self.mixture:
            raise ValueError(
                f"the datasets hold none of the sample kinds {sorted(config.sample_kinds)} (sample_kinds)"
            )
        has_text = any(entry.has_text for entry, _ in self.mixture)
        self.text_len = config.max_text_tokens if has_text else None
        self._val_batches: list[Batch] | None = None
        self.loss_weights = {"flow": config.flow_weight}
        self.action_tokens = self._action_tokens(existing if self.state is not None else None)
        if model_config.knowledge_insulation and self.action_tokens is None:
            raise ValueError(
                "knowledge_insulation without a VLM loss would freeze the VLM (the flow loss cannot "
                "reach it): give the model FAST tokens (model_overrides.fast_vocab_size) or train "
                "without insulation"
            )

        torch.manual_seed(config.seed)
        model = VLA(model_config)
        if pretrained is not None:
            load_initial_weights(model, pretrained.model)
        freeze(model, config.freeze)
        if config.lora:
            apply_lora(model, config.lora)
        if self.state is not None:
            model.load_state_dict(self.state["params"])
        model.set_gradient_checkpointing(config.gradient_checkpointing)
        self.model = model.to(runtime.device)
        self.module = parallelize(self.model, runtime, config.distributed)
        self.params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("nothing to train: every parameter is frozen")
        self.optimizer = build_optimizer(list(self.params.values()), config.optim)
        self.ema = EMA(self.params, config.optim.ema_decay) if config.optim.ema_decay else None
        if self.state is not None:
            load_optimizer_state(self.model, self.optimizer, self.state["optimizer"], runtime)
            if self.ema is not None:
                self.ema.load(self.state["ema"])
        self.step_module: nn.Module = torch.compile(self.module) if config.compile else self.module
        if self.state is not None:
            trained_with = self.state["trainer_state"].get("threads")
            if trained_with is not None and trained_with != runtime.threads:
                log.warning(
                    "the run trained with %d compute threads and resumes with %d: the continuation "
                    "matches an uninterrupted run only to rounding",
                    trained_with,
                    runtime.threads,
                )

    def _with_overrides(self, source: SourceConfig) -> SourceConfig:
        c = self.config
        return replace(
            source,
            cameras=c.cameras if c.cameras is not None else source.cameras,
            delta_action_mask=tuple(c.delta_action_mask) if c.delta_action_mask else source.delta_action_mask,
            prompt=c.prompt or source.prompt,
        )

    # ---- data ------------------------------------------------------------------------------

    def _mixture(self, sources: list[Source], *, web: bool) -> list[tuple[Any, float | None]]:
        """(mixture source, its weight or None for samples ** exponent) for each kind of sample
        (`vlaflow.data.mixture`) each dataset holds; a kind's weight, else the dataset's."""
        c = self.config
        out = []
        for source in sources:
            entries: list[Any] = frame_kinds(source, c.sample_kinds, subtask_targets=c.subtask_targets)
            if web and "web" in c.sample_kinds and WebSamples.available(source.config.path):
                entries.append(WebSamples(source.config.path, self.model_config, source.cameras))
            for entry in entries:
                weight = c.sample_kinds.get(entry.kind)
                out.append((entry, source.config.weight if weight is None else weight))
        return out

    def _action_tokens(self, checkpoint: Path | None) -> ActionTokens | None:
        """The FAST target builder of a model with FAST tokens: the tokenizer of the checkpoint being
        resumed, else `fast_tokenizer=DIR`, else the `init` model's, else one fitted here on the
        training chunks (vocabulary `fast_vocab_size`, so a tiny run needs no separate fit)."""
        m, c = self.model_config, self.config
        if not m.fast_vocab_size:
            return None
        init_dir = Path(c.init) / FAST_TOKENIZER_DIR if c.init else None
        if checkpoint is not None and (checkpoint / FAST_TOKENIZER_DIR).is_dir():
            fast = FastTokenizer.load(checkpoint / FAST_TOKENIZER_DIR)
        elif c.fast_tokenizer:  # e.g. the output of `vlaflow fast fit`
            fast = FastTokenizer.load(c.fast_tokenizer)
        elif init_dir is not None and init_dir.is_dir():
            fast = FastTokenizer.load(init_dir)
        else:  # robots with fewer action dims are zero-padded to the most (the pi0 paper's rule)
            dims = max(s.action_dim for s in self.sources)
            chunks = np.concatenate(
                [
                    np.pad(s.normalized_chunks(), ((0, 0), (0, 0), (0, dims - s.action_dim)))
                    for s in self.sources
                ]
            )
            fast = FastTokenizer.fit(chunks, vocab_size=m.fast_vocab_size, scale=c.fast_scale)
        if fast.vocab_size > m.fast_vocab_size or fast.action_horizon != m.action_horizon:
            raise ValueError(
                f"FAST tokenizer (vocabulary {fast.vocab_size}, horizon {fast.action_horizon}) does not "
                f"fit the model (fast_vocab_size {m.fast_vocab_size}, action_horizon {m.action_horizon})"
            )
        return ActionTokens(fast=fast, ids=FastIdRange.for_model(m), max_len=c.max_fast_tokens)

    def _sampler(self) -> StepSampler:
        c = self.config
        sizes = [len(entry) for entry, _ in self.mixture]
        return StepSampler(
            sizes,
            mixture_weights(sizes, [weight for _, weight in self.mixture], c.mixture_exponent),
            global_batch=c.batch_size,
            seed=c.seed,
            start=self.start,
            stop=c.steps,
            rank=self.runtime.rank,
            world=self.runtime.world,
        )

    def _realised_mixture(self, sampler: StepSampler) -> dict[str, dict[str, float]]:
        """Per mixture source: the samples it gives over the steps still to run (all processes) and
        its share by weight."""
        counts = sampler.source_counts()
        return {
            entry.name: {"samples": int(n), "weight": float(p)}
            for (entry, _), n, p in zip(self.mixture, counts, sampler.p, strict=True)
        }

    def _loader(self, sampler: StepSampler) -> torch.utils.data.DataLoader:
        c = self.config
        samples = TrainingSamples(
            [entry for entry, _ in self.mixture],
            self.tokenizer,
            augment=c.augment,
            seed=c.seed,
            action_tokens=self.action_tokens,
            text_len=self.text_len,
        )
        return torch.utils.data.DataLoader(
            samples,
            batch_sampler=sampler,
            num_workers=c.num_workers,
            collate_fn=collate,
            pin_memory=self.runtime.device.type == "cuda",
        )

    # ---- one step --------------------------------------------------------------------------

    def _losses(self, module: nn.Module, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        """Every loss term's (sum, count) on this process's batch (see `training.losses`)."""
        c, device, m = self.config, self.runtime.device, self.model_config
        targets = batch_targets(
            batch, flow=m.expert is not None, reference_reduction=c.loss_reduction == "reference"
        )
        noise, t = flow_inputs(batch.ids, m.action_horizon, m.action_dim, c.seed, c.flow_draws)
        obs = batch.observation.without_prompt_padding()  # same losses, 14% faster tabletop steps
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=c.precision == "bfloat16"):
            losses = module(obs, targets, noise.to(device), t.to(device))
        return term_sums(losses, targets)

    def _step(self, step: int, batch: Batch) -> tuple[dict[str, float], float]:
        c = self.config
        batch = batch.to(self.runtime.device)
        lr = learning_rate(step, c.optim, c.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total, means = weighted_total(
            self._losses(self.step_module, batch),
            self.loss_weights,
            lambda x: all_reduce_sum(x, self.runtime),
        )
        (total * self.runtime.world).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), c.optim.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.params)
        return _loss_row(means, self.loss_weights), float(
            grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        )

    # ---- validation ------------------------------------------------------------------------

    def _validation_batches(self) -> list[Batch]:
        """A fixed set of held-out frames (evenly spaced in each held-out source), no augmentation,
        built once: every validation sees the same frames, noise and times."""
        if self._val_batches is None:
            keys, n = [], VALIDATION_IDS
            entries = [entry for entry, _ in self.val_mixture]
            per_source = max(1, self.config.val_samples // len(entries))
            for i, entry in enumerate(entries):
                for frame in np.unique(np.linspace(0, len(entry) - 1, per_source).round().astype(int)):
                    keys.append(SampleKey(n, i, int(frame)))
                    n += 1
            samples = TrainingSamples(
                entries,
                self.tokenizer,
                augment=False,
                seed=self.config.seed,
                action_tokens=self.action_tokens,
                text_len=self.text_len,
            )
            size = self.config.batch_size
            self._val_batches = [
                collate([samples[k] for k in keys[i : i + size]]) for i in range(0, len(keys), size)
            ]
        return self._val_batches

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Every loss term on the held-out frames (reduced as in training), and optionally the
        normalized MSE of sampled action chunks against the demonstrations (open loop)."""
        c, device, m = self.config, self.runtime.device, self.model_config
        totals: dict[str, list[float]] = {}
        action_sum = action_count = 0.0
        for batch in self._validation_batches():
            batch = batch.to(device)
            for term, (value, count) in self._losses(self.model, batch).items():
                acc = totals.setdefault(term, [0.0, 0.0])
                acc[0] += float(value)
                acc[1] += float(count)
            if c.val_action_error and m.expert is not None:
                noise, _ = flow_inputs(batch.ids, m.action_horizon, m.action_dim, c.seed)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=c.precision == "bfloat16"):
                    sampled = self.model.sample_actions(batch.observation, noise=noise.to(device))
                action_sum += float(((sampled.float() - batch.actions) ** 2 * batch.action_mask).sum())
                action_count += float(batch.action_mask.sum())
        means = {term: torch.tensor(value / max(count, 1.0)) for term, (value, count) in totals.items()}
        row = {f"val_{k}": v for k, v in _loss_row(means, self.loss_weights).items()}
        if c.val_action_error and m.expert is not None:
            row["val_action_mse"] = action_sum / max(action_count, 1.0)
        return row

    # ---- checkpoints and logs ---------------------------------------------------------------

    def _save(self, step: int) -> Path | None:
        params = full_model_state(self.model, self.runtime)
        ema = self.ema.full_state() if self.ema is not None else None
        optimizer = full_optimizer_state(self.model, self.optimizer, self.runtime)
        path = None
        if self.runtime.main:
            export = {**params, **(ema or {})}
            scales = lora_scales(self.model)
            if scales:
                export = merged_state(export, scales)
            path = save_checkpoint(
                self.output,
                step,
                export=export,
                params=params if (ema or scales) else None,
                ema=ema,
                optimizer=optimizer,
                config=self._checkpoint_config(step),
                write_extra=self._write_fast_tokenizer,
                trainer_state={
                    "seed": self.config.seed,
                    "samples_seen": step * self.config.batch_size,
                    "threads": self.runtime.threads,
                },
                keep_last=self.config.keep_last,
            )
        if self.runtime.world > 1:
            torch.distributed.barrier()
        return path

    def _write_fast_tokenizer(self, directory: Path) -> None:
        if self.action_tokens is not None:
            self.action_tokens.fast.save(directory / FAST_TOKENIZER_DIR)

    def _checkpoint_config(self, step: int) -> dict[str, Any]:
        return {
            "model": self.model_config.to_dict(),
            "tokenizer": self.tokenizer.spec(),
            "metadata": {
                "step": step,
                "train_config": self.config.to_dict(),
                "normalization": self.normalization,
                "norm_stats": {s.config.name: s.stats.to_dict() for s in self.sources},
                "val_episodes": self.held_out,
            },
        }

    def _open_metrics(self) -> Any:
        path = self.output / METRICS_FILE
        kept = []
        if self.start and path.exists():  # drop what was logged after the checkpoint we resume from
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.start]
        path.write_text("".join(line + "\n" for line in kept))
        return path.open("a")

    def run(self) -> TrainResult:
        c, main = self.config, self.runtime.main
        self.output.mkdir(parents=True, exist_ok=True)
        metrics = self._open_metrics() if main else None
        if main:
            save_stats(self.output / "norm_stats.json", {s.config.name: s.stats for s in self.sources})
        board = _tensorboard(self.output) if main else None
        wandb_run = _wandb(c, self.output) if main else None
        bar = tqdm(
            total=c.steps, initial=self.start, disable=not (main and self.progress), desc="train", unit="step"
        )
        if main and self.progress and self.start:
            tqdm.write(f"resuming from step {self.start} ({latest_checkpoint(self.output)})")
        if main and self.progress and self.held_out:
            held = ", ".join(f"{name}: {len(eps)} episodes" for name, eps in self.held_out.items())
            tqdm.write(f"validation every {c.val_every} steps on held-out episodes ({held})")
        sampler = self._sampler()
        # The realised mixture goes on the run's first row of metrics.jsonl (every row keeps its losses).
        first_row_extra = {"mixture": self._realised_mixture(sampler)} if main else {}
        if main and self.progress:
            tqdm.write(_mixture_table(first_row_extra["mixture"], self.start, c.steps))
        losses: list[tuple[int, float]] = []
        last_checkpoint = None
        tick, done_since_log = time.perf_counter(), 0
        self.model.train()
        for step, batch in zip(range(self.start, c.steps), _batches(self._loader(sampler)), strict=False):
            terms, grad_norm = self._step(step, batch)
            loss = terms["loss"]
            number = step + 1
            losses.append((number, loss))
            done_since_log += 1
            bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{learning_rate(step, c.optim, c.steps):.2e}", refresh=False
            )
            bar.update(1)
            validate = bool(self.val_sources) and (number % c.val_every == 0 or number == c.steps)
            if number % c.log_every == 0 or number == c.steps or validate:
                elapsed = time.perf_counter() - tick
                row = {
                    "step": number,
                    **terms,
                    "lr": learning_rate(step, c.optim, c.steps),
                    "grad_norm": grad_norm,
                    "samples_per_s": done_since_log * c.batch_size / max(elapsed, 1e-9),
                }
                if validate:
                    row.update(self._validate())
                    bar.set_postfix(loss=f"{loss:.4f}", val=f"{row['val_loss']:.4f}", refresh=False)
                if metrics is not None:
                    metrics.write(json.dumps({**row, **first_row_extra}) + "\n")
                    metrics.flush()
                    first_row_extra = {}
                if board is not None:
                    for k, v in row.items():
                        if k != "step":
                            board.add_scalar(f"train/{k}", v, number)
                if wandb_run is not None:
                    wandb_run.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=number)
                tick, done_since_log = time.perf_counter(), 0
            if number % c.save_every == 0 or number == c.steps:
                last_checkpoint = self._save(number) or last_checkpoint
        bar.close()
        if metrics is not None:
            metrics.close()
            plot_losses(self.output / METRICS_FILE, self.output / "loss.png")
        if board is not None:
            board.close()
        if wandb_run is not None:
            wandb_run.finish()
        return TrainResult(self.output, c.steps, last_checkpoint or latest_checkpoint(self.output), losses)


def _wandb(config: TrainConfig, output: Path) -> Any:
    if not config.wandb_project:
        return None
    try:
        import wandb
    except ImportError as err:
        raise ValueError("wandb_project is set but wandb is not installed (pip install wandb)") from err
    run_id = "vlaflow-" + "".join(ch if ch.isalnum() else "-" for ch in str(output.resolve()))[-100:]
    return wandb.init(
        project=config.wandb_project, dir=str(output), config=config.to_dict(), id=run_id, resume="allow"
    )


def _tensorboard(output: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(output / "tensorboard"))


def load_initial_weights(model: VLA, initial: VLA) -> None:
    """`initial`'s weights into `model`. A model that adds an action expert to a VLM-only one (the
    recipe's second stage) keeps its freshly initialized expert and flow heads; FAST embedding rows
    the initial model lacks stay fresh too. Anything else missing or mis-shaped is an error."""
    state = initial.state_dict()
    own = model.state_dict()
    if initial.config.expert is None and model.config.expert is not None:
        fresh = [k for k in own if k not in state]
        bad = [
            k
            for k in fresh
            if not (".experts.1." in k or k.startswith(FLOAT32_HEADS) or k == "transformer.norms.1")
        ]
        bad = [k for k in bad if not k.startswith("transformer.norms.1.")]
        if bad:
            raise ValueError(f"init checkpoint lacks {bad[:5]}")
    embed = "transformer.embed.weight"
    if embed in state and state[embed].shape[0] < own[embed].shape[0]:
        rows = own[embed].clone()
        rows[: state[embed].shape[0]] = state[embed]
        state[embed] = rows
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (initial.config.expert is not None and missing):
        raise ValueError(
            f"init checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _mixture_table(mixture: dict[str, dict[str, float]], start: int, stop: int) -> str:
    total = max(1, sum(int(m["samples"]) for m in mixture.values()))
    width = max(len(name) for name in mixture)
    lines = [f"mixture of steps {start}-{stop} ({total} samples): source, samples, share (by weight)"]
    for name, m in mixture.items():
        share = 100 * m["samples"] / total
        lines.append(f"  {name:<{width}}  {int(m['samples']):>8}  {share:5.1f}%  ({100 * m['weight']:.1f}%)")
    return "\n".join(lines)


def _loss_row(means: dict[str, Tensor], weights: dict[str, float]) -> dict[str, float]:
    """`loss` (the weighted sum that is minimized) and, with several terms, `loss_<term>` each."""
    row = {"loss": float(sum(weights.get(t, 1.0) * v for t, v in means.items()))}
    if len(means) > 1 or "flow" not in means:
        row |= {f"loss_{t}": float(v) for t, v in means.items()}
    return row


def plot_losses(metrics: Path, out: Path) -> None:
    """Training loss (and validation losses, where logged) and the learning rate over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train (batch)")
    terms = [f"loss_{t}" for t in ("text", "fast", "flow")]
    for key in terms:
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax_loss.plot(
                *zip(*points, strict=True), linewidth=0.8, label=f"train {key.removeprefix('loss_')}"
            )
    for key in ("val_loss", *[f"val_{t}" for t in terms], "val_action_mse"):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            label = "validation" + (
                f" {key.removeprefix('val_').removeprefix('loss_')}" if key != "val_loss" else ""
            )
            ax_loss.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    ax_loss.set(
        xlabel="step", ylabel="loss (text/FAST: cross-entropy, flow: MSE)", yscale="log", title="loss"
    )
    ax_loss.legend()
    ax_lr.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def held_out_episodes(config: TrainConfig) -> dict[str, list[int]]:
    """Dataset name -> episode indices held out for validation (none: empty): `val_episodes` as
    given, or `val_fraction` of each dataset's episodes drawn with the run's seed."""
    names = [Path(d.path).name for d in config.datasets]
    if config.val_episodes is not None:
        chosen = config.val_episodes
        if isinstance(chosen, list):
            if len(names) != 1:
                raise ValueError(
                    f"val_episodes as a list needs exactly one dataset (got {names}); give "
                    '{"dataset name": [episodes]} instead'
                )
            chosen = {names[0]: chosen}
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise ValueError(f"val_episodes names datasets {unknown}; the datasets are {names}")
        return {name: sorted(set(episodes)) for name, episodes in chosen.items() if episodes}
    if not config.val_fraction:
        return {}
    held_out = {}
    for i, (name, source) in enumerate(zip(names, config.datasets, strict=True)):
        episodes = LeRobotMeta(source.path).episode_indices
        if len(episodes) < 2:
            raise ValueError(f"{source.path}: val_fraction needs at least 2 episodes, it has {len(episodes)}")
        count = min(len(episodes) - 1, max(1, round(config.val_fraction * len(episodes))))
        rng = np.random.default_rng([config.seed, i, 3])
        held_out[name] = sorted(int(e) for e in rng.choice(episodes, size=count, replace=False))
    return held_out
