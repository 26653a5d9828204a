"""A multi-stage household tabletop benchmark in MuJoCo for hierarchical, language-following policies.

Modules: `scene` (object vocabulary, fixtures, layouts, train/OOD splits), `mjcf` (the generated model),
`tasks` (long-horizon prompts, subtasks, scoring), `state` (the privileged simulator state), `world`
(the gymnasium-style environment), `annotations` (`<loc>` bounding boxes), `expert` (scripted expert),
`rollout` (the tabletop side of the shared rollout engine), `web` (caption / VQA / detection
samples), `generate` (LeRobot datasets) and `evaluate` (scores with confidence intervals, chart,
videos). See docs/benchmarks/tabletop.md.
"""

from vlaflow.sim.tabletop.expert import ExpertPolicy
from vlaflow.sim.tabletop.rollout import Episode, rollout, rollout_many
from vlaflow.sim.tabletop.scene import HELD_OUT_COMBOS, HELD_OUT_LAYOUTS, SPLITS, Scene
from vlaflow.sim.tabletop.state import WorldState
from vlaflow.sim.tabletop.tasks import (
    FAMILIES,
    LONG_FAMILIES,
    EpisodeSpec,
    Subtask,
    TaskTracker,
    sample_episode,
)
from vlaflow.sim.tabletop.world import TabletopEnv

__all__ = [
    "FAMILIES",
    "HELD_OUT_COMBOS",
    "HELD_OUT_LAYOUTS",
    "LONG_FAMILIES",
    "SPLITS",
    "Episode",
    "EpisodeSpec",
    "ExpertPolicy",
    "Scene",
    "Subtask",
    "TabletopEnv",
    "TaskTracker",
    "WorldState",
    "rollout",
    "rollout_many",
    "sample_episode",
]
