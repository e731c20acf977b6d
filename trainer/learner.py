"""One learner rank: an FSDP2 shard of the policy, its optimiser, the GRPO step.

N ``Learner`` actors form one torch.distributed group (gloo on CPU, NCCL on GPU). Each
decoder layer and the whole policy are ``fully_shard``-ed; every rank gets a slice of the
batch and runs the same number of micro-batches (collectives must line up).

Loss scaling: FSDP averages gradients over ranks, so each rank divides its token sum by
``num_tokens / world_size`` (``num_tokens`` over all ranks): the update is then the
gradient of the token mean over the whole batch.
"""

import dataclasses
import logging
import os
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from trainer.gate import is_gate_lambda, is_gate_parameter
from trainer.grpo import GRPOLossConfig, grpo_loss, logprob_gaps
from trainer.lora import add_adapters, decoder_layers, merge_adapters, save_adapter
from trainer.policy import ReplayBatch, ReplayPolicy
from trainer.settings import LearnerConfig, LoraConfig
from vllm_soft.gate import GATE_PREFIX, GateSettings, gate_from_state_dict, load_gate, save_gate
from vllm_soft.runtime import release_freed_memory

POLICY_PREFIX = "model."
log = logging.getLogger(__name__)


def _load_policy(model_path: str, config: LearnerConfig, trainable: bool, lora: LoraConfig | None = None,
                 gate: bool = False) -> tuple[ReplayPolicy, GateSettings | None]:
    """The sharded policy and, with ``gate``, the settings of its HRPO gate (read from the
    model folder, or drawn fresh, which is logged). With ``lora``, only the adapters and the
    gate require grad. Weights are kept in ``config.dtype``; with ``mixed_precision``, FSDP
    casts them to bf16 for compute and reduces gradients in ``config.dtype``. The gate is
    kept, computed and reduced in float32, as the engine computes it."""
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, config.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model.requires_grad_(trainable)
    gate_tensors = settings = None
    if gate:
        gate_tensors, settings, fresh = load_gate(model_path, model.get_input_embeddings().weight.shape[1])
        if fresh:
            log.warning("%s has no soft gate: training starts from a fresh one (seed %d)", model_path, settings.seed)
    if lora is not None:
        model = add_adapters(model, lora)
    policy = ReplayPolicy(model, config.share_prompts, gate_tensors)
    precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if config.computes_in_bf16() else dtype, reduce_dtype=dtype)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=precision)
    if policy.soft_gate is not None:
        policy.soft_gate.requires_grad_(trainable)
        fully_shard(policy.soft_gate, mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32))
    fully_shard(policy, mp_policy=precision)
    return policy, settings


def _parameter_groups(policy: ReplayPolicy, config: LearnerConfig) -> list[dict]:
    """AdamW groups: the model at ``learning_rate``; the gate's layers and its Λ at their
    own rates (HRPO: 1e-4 and 1e-3)."""
    groups = {"model": [], "gate": [], "gate_lambda": []}
    for name, parameter in policy.named_parameters():
        if parameter.requires_grad:
            key = "gate_lambda" if is_gate_lambda(name) else "gate" if is_gate_parameter(name) else "model"
            groups[key].append(parameter)
    rates = {"model": config.learning_rate, "gate": config.gate_learning_rate,
             "gate_lambda": config.gate_lambda_learning_rate}
    return [{"params": params, "lr": rates[key], "name": key} for key, params in groups.items() if params]


def hf_state_dict(policy_state: dict) -> dict:
    """Policy state dict -> Hugging Face names (drop the wrapper's ``model.`` prefix)."""
    return {name.removeprefix(POLICY_PREFIX): tensor for name, tensor in policy_state.items()}


class Learner:
    """Rank ``rank`` of ``world_size``; the driver calls the same methods on every rank."""

    def __init__(self, config: LearnerConfig, loss: GRPOLossConfig, model_path: str, rank: int, world_size: int,
                 master_addr: str, master_port: int, seed: int, gate: bool = False):
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "gloo":
            torch.set_num_threads(config.num_cpus_per_rank)
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        torch.manual_seed(seed + rank)
        self.config, self.loss_config, self.rank, self.world_size = config, loss, rank, world_size
        self.policy, self.gate_settings = _load_policy(model_path, config, trainable=True, lora=config.lora, gate=gate)
        # With LoRA the frozen reference is the policy with its adapters switched off.
        self.reference = None
        if loss.beta > 0 and config.lora is None:
            self.reference = _load_policy(model_path, config, trainable=False, gate=gate)[0]
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(self.policy, config), betas=tuple(config.betas), weight_decay=config.weight_decay,
        )

    def ready(self) -> int:
        return self.rank

    # -- the GRPO step ---------------------------------------------------------------

    def train_step(self, batch: ReplayBatch, advantages: list[float], rollout_logprobs: list[list[float]],
                   num_micro_batches: int, num_tokens: int) -> dict:
        """One optimiser step on this rank's share; returns this rank's metric sums."""
        start = time.perf_counter()
        size = self.config.micro_batch_size
        totals: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        order = _packing_order(batch)
        for index in range(num_micro_batches):
            rows = order[index * size : (index + 1) * size]
            weight = 1.0
            if not rows:  # an idle rank still joins the collectives, with a zero-weight sequence
                rows, weight = [0], 0.0
            self.policy.set_requires_gradient_sync(index == num_micro_batches - 1)
            micro = _select(batch, rows)
            logprobs, mask = self.policy(micro)
            mask = mask & (weight > 0)
            share_sum, gated = self.policy.hidden_share
            _add(totals, "hidden_share_sum", share_sum * weight)
            _add(totals, "gated_inputs", gated * weight)
            if self.policy.latent_replay_gap is not None and weight > 0:
                totals["latent_replay_gap"] = max(totals.get("latent_replay_gap", 0.0), self.policy.latent_replay_gap)
            rollout = _pad([rollout_logprobs[r] for r in rows], logprobs.shape[1]).to(logprobs.device)
            reference = self._reference_logprobs(micro) if self.loss_config.beta > 0 else None
            loss, metrics = grpo_loss(
                logprobs, logprobs.detach(), torch.tensor([advantages[r] for r in rows], device=logprobs.device),
                mask, self.loss_config, ref_logprobs_BT=reference, rollout_logprobs_BT=rollout,
                num_tokens=num_tokens / self.world_size,
            )
            loss.backward()
            tokens = float(mask.sum())
            _add(totals, "tokens", tokens)
            _add(totals, "loss", float(loss.detach()))
            # Soft-step actions (densities) and tokens replay with different gaps: kept apart.
            gap = logprob_gaps(logprobs, rollout)
            soft = _soft_action_mask(micro.soft_steps, mask)
            _add(totals, "soft_tokens", float(soft.sum()))
            _add(totals, "logprob_gap_sum", float(gap[mask].sum()))
            _add(totals, "logprob_gap_soft_sum", float(gap[soft].sum()))
            for name in ("clip_fraction", "ratio_mean", "kl", "tis_weight_mean"):
                _add(totals, f"{name}_sum", float(metrics[name]) * tokens)
            totals["ratio_max"] = max(totals.get("ratio_max", 0.0), float(metrics["ratio_max"]) if tokens else 0.0)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        totals["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        totals["learner_s"] = time.perf_counter() - start
        release_freed_memory()  # activations: return the peak to the OS before rollouts run
        return totals

    @torch.no_grad()
    def _reference_logprobs(self, micro: ReplayBatch) -> torch.Tensor:
        if self.reference is not None:
            return self.reference(micro)[0]
        with self.policy.model.disable_adapter():
            return self.policy(micro)[0]

    # -- weights out -------------------------------------------------------------------

    def _gathered_state(self) -> dict | None:
        """All ranks call; rank 0 gets the policy's full state dict (CPU), wrapper prefix dropped."""
        state = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return hf_state_dict(state) if self.rank == 0 else None

    def full_state_dict(self) -> dict | None:
        """All ranks call; rank 0 returns the full Hugging Face state dict (LoRA merged), others None."""
        state = self._gathered_state()
        if state is None or self.config.lora is None:
            return state
        return merge_adapters(state, self.config.lora.alpha / self.config.lora.rank)

    def weights_checksum(self) -> tuple[int, float, float] | None:
        """All ranks call; rank 0 returns ``rollout.weights.parameter_checksum`` of the full
        weights as the engine holds them (a tied output layer counted once)."""
        from rollout.weights import parameter_checksum

        state = self.full_state_dict()
        if state is None:
            return None
        if self.policy.model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        return parameter_checksum(state.values())

    def push_buckets(self, bucket_bytes: int, dtype: str | None = None) -> list | None:
        """All ranks call; rank 0 puts the weights in the object store in buckets, layer order,
        cast to the engines' ``dtype`` when given (the engine would round them the same way)."""
        import ray

        state = self.full_state_dict()
        if state is None:
            return None
        buckets, current, size = [], [], 0
        for name, tensor in state.items():
            if dtype is not None and not name.startswith(GATE_PREFIX):  # the engine keeps the gate in float32
                tensor = tensor.to(getattr(torch, dtype))
            current.append((name, tensor))
            size += tensor.numel() * tensor.element_size()
            if size >= bucket_bytes:
                buckets.append(ray.put(current))
                current, size = [], 0
        if current:
            buckets.append(ray.put(current))
        del state, current
        release_freed_memory(collect_cycles=False)
        return buckets

    # -- checkpoints -------------------------------------------------------------------

    def save(self, folder: str, tokenizer_source: str) -> None:
        """All ranks: sharded model + optimiser state (DCP); rank 0 also a Hugging Face folder."""
        model_state, optim_state = get_state_dict(self.policy, self.optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=os.path.join(folder, "dcp"))
        torch.save(torch.get_rng_state(), os.path.join(folder, f"rng_rank{self.rank}.pt"))
        state = self._gathered_state()
        if self.rank == 0:
            lora = self.config.lora
            if lora is not None:
                save_adapter(state, lora, tokenizer_source, os.path.join(folder, "adapter"))
                state = merge_adapters(state, lora.alpha / lora.rank)
            gate = {name.removeprefix(GATE_PREFIX): state.pop(name) for name in list(state) if name.startswith(GATE_PREFIX)}
            _save_hf_folder(state, tokenizer_source, os.path.join(folder, "model"))
            if gate:  # beside the weights, where every vLLM worker reads it
                hidden_size = gate["lambda"].shape[0]
                save_gate(os.path.join(folder, "model"), gate_from_state_dict(gate, hidden_size), self.gate_settings)
        dist.barrier()

    def load(self, folder: str) -> None:
        model_state, optim_state = get_state_dict(self.policy, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=os.path.join(folder, "dcp"))
        set_state_dict(self.policy, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        torch.set_rng_state(torch.load(os.path.join(folder, f"rng_rank{self.rank}.pt")))

    def shutdown(self) -> None:
        dist.destroy_process_group()


def _save_hf_folder(state: dict, source: str, target: str) -> None:
    """A servable Hugging Face model folder: config and tokenizer from ``source``, new weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(state, assign=True, strict=False)
    model.tie_weights()
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)


def _select(batch: ReplayBatch, rows: list[int]) -> ReplayBatch:
    return dataclasses.replace(
        batch,
        prompt_ids=[batch.prompt_ids[r] for r in rows],
        response_ids=[batch.response_ids[r] for r in rows],
        soft_steps=[batch.soft_steps[r] for r in rows],
    )


def _packing_order(batch: ReplayBatch) -> list[int]:
    """Sequences grouped by prompt (a micro-batch computes a shared prompt once), groups by
    packed length (micro-batches of similar lengths pad less)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(batch.prompt_ids):
        groups.setdefault(tuple(prompt), []).append(i)
    ordered = sorted(groups.items(), key=lambda g: len(g[0]) + sum(len(batch.response_ids[i]) for i in g[1]))
    return [i for _, members in ordered for i in members]


def _soft_action_mask(soft_steps: list[list[dict]], real_BT: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, on ``real_BT``'s device: the real response positions whose token was a
    soft step's own action (a traced step with a log-probability; a forced token has none)."""
    cells = [(row, step["position"]) for row, steps in enumerate(soft_steps) for step in steps
             if step["logprob"] is not None and step["position"] < real_BT.shape[1]]
    soft = torch.zeros_like(real_BT, dtype=torch.bool)
    if cells:
        rows, columns = torch.tensor(cells, device=real_BT.device).T
        soft[rows, columns] = True
    return soft & real_BT


def _pad(rows: list[list[float]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def _add(totals: dict, key: str, value: float) -> None:
    totals[key] = totals.get(key, 0.0) + value
