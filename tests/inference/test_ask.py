"""`vlaflow ask` end to end on a tiny checkpoint: the question laid out as training's web samples,
the answer printed, `<loc>` boxes drawn on the image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlaflow.bench.serve import tiny_checkpoint
from vlaflow.cli import main
from vlaflow.models import VLA
from vlaflow.models.vla import Generation
from vlaflow.tokenizers import EmbeddedTokenizer
from vlaflow.tokenizers.prompts import prompt_token_ids

ANSWER = "<loc0256><loc0256><loc0768><loc0768> red cup"


def test_ask_prints_the_answer_and_draws_its_boxes(tmp_path, monkeypatch, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    image_path = tmp_path / "scene.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image_path)
    tokenizer = EmbeddedTokenizer()
    asked = []

    def generate(self, obs, *, max_new_tokens, eos_id):
        """The tiny random model cannot know the answer: stand in for its decoding."""
        asked.append(obs.tokenized_prompt[obs.tokenized_prompt_mask].tolist())
        ids = tokenizer.encode(ANSWER)
        return Generation(tokens=torch.tensor([[*ids, eos_id]]), lengths=torch.tensor([len(ids)]))

    monkeypatch.setattr(VLA, "generate", generate)
    args = ["ask", "--checkpoint", str(checkpoint), "--image", str(image_path), "--prompt", "detect red cup"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == ANSWER
    drawn = np.asarray(Image.open(tmp_path / "scene_answer.png"))
    assert printed[1] == f"boxes drawn on {image_path}: {tmp_path / 'scene_answer.png'}"
    assert asked == [prompt_token_ids(tokenizer, "detect red cup", None, pi05=False)]  # as web samples
    assert drawn[16, 16:48].any() and not drawn[32, 32].any()  # the box's top edge, not its inside

    monkeypatch.undo()  # the real decoding: some text, no boxes, nothing drawn
    output = tmp_path / "out.png"
    args = [*args[:-1], "caption en", "--max-tokens", "4", "--output", str(output)]
    assert main(args) == 0 and not output.exists()
