"""Runs orbax (and so JAX) in a child process for the tests: once JAX has started its threads in
the pytest process, later tests that fork (data-loader workers) risk a deadlock.

    python orbax_worker.py save-released TREE.npz CHECKPOINT [bfloat16]
    python orbax_worker.py save-step TREE.npz RUN STEP
    python orbax_worker.py convert CHECKPOINT OUT OPTIONS_JSON   (OUT: a vlaflow model directory,
                                                                  OUT/detected.json, OUT/params.npz)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np


def _nested(flat: dict[str, np.ndarray], dtype: str | None) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        if dtype == "bfloat16":
            import ml_dtypes

            value = value.astype(ml_dtypes.bfloat16)
        node[leaf] = value
    return tree


def main(argv: list[str]) -> None:
    import orbax.checkpoint as ocp

    command = argv[0]
    if command == "save-released":
        tree = _nested(dict(np.load(argv[1])), argv[3] if len(argv) > 3 else None)
        with ocp.PyTreeCheckpointer() as checkpointer:
            checkpointer.save((Path(argv[2]) / "params").resolve(), {"params": tree})
    elif command == "save-step":
        flat = dict(np.load(argv[1]))
        state = _nested({f"{k}/value": v for k, v in flat.items()}, None)  # an nnx.State's leaves
        handlers = {"params": ocp.PyTreeCheckpointHandler(), "train_state": ocp.PyTreeCheckpointHandler()}
        with ocp.CheckpointManager(Path(argv[2]).resolve(), item_handlers=handlers) as manager:
            step = int(argv[3])
            manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.PyTreeSave({"params": state}),
                    train_state=ocp.args.PyTreeSave({"step": np.asarray(step)}),
                ),
            )
            manager.wait_until_finished()
    elif command == "convert":
        from vlaflow.interop.openpi_jax import load_jax_checkpoint, read_params
        from vlaflow.interop.openpi_robots import robot
        from vlaflow.pretrained import save_pretrained

        options = json.loads(argv[3])
        if "robot" in options:
            options["settings"] = robot(options.pop("robot")).settings
        model, detected = load_jax_checkpoint(argv[1], **options)
        out = Path(argv[2])
        save_pretrained(out, model)
        (out / "detected.json").write_text(json.dumps(dataclasses.asdict(detected)))
        params = read_params(argv[1])
        np.savez(out / "params.npz", **{k: v.astype(np.float32) for k, v in params.items()})
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
