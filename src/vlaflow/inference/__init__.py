"""Running trained policies: from raw observations to actions."""

PREV_ACTIONS_KEY = "prev_actions"
"""Observation key for real-time chunking: the previous chunk's not-yet-executed actions (L, A)."""
DELAY_KEY = "inference_delay"
"""Observation key for real-time chunking: the inference delay d in control steps."""
SUBTASK_KEY = "subtask"
"""Observation and output key of the subtask: given (oracle mode) or decoded (hierarchical mode)."""
SESSION_KEY = "session"
"""Observation key naming the robot (any hashable) whose decoded subtask `Policy` keeps in
hierarchical mode; by default an observation's index in its batch. The policy server sets one per
connection."""
