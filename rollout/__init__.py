"""Ray actors that own vLLM engines with the vllm-soft plugin and produce grouped rollouts.

Empty until the rollout pool lands (issue: Ray rollout pool); dependencies point one way:
``vllm_soft`` <- ``rollout`` <- ``trainer``.
"""
