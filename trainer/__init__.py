"""The FSDP GRPO learner and ``trainer/run.py``, its entry point.

Empty until the learner lands (issue: FSDP GRPO learner); it builds on ``rollout``.
"""
