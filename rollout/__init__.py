"""Ray actors that own vLLM engines with the vllm-soft plugin and produce grouped rollouts.

Dependencies point one way: ``vllm_soft`` <- ``rollout`` <- ``trainer``.
"""
