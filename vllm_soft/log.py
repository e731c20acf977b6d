"""The package's logger: a child of vLLM's ``vllm`` logger, so its lines go through vLLM's
logging (its format and handler, ``VLLM_LOGGING_LEVEL``) in every vLLM process. A logger of
its own name would have no handler there (vLLM configures ``vllm`` only), and Python drops
a handler-less logger's INFO lines: the runner line nobody saw."""

import logging

LOGGER_NAME = "vllm.vllm_soft"
logger = logging.getLogger(LOGGER_NAME)
