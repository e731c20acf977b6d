"""The FSDP GRPO learner and ``trainer/run.py``, its entry point; it builds on ``rollout``."""
