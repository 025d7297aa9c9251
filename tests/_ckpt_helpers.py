"""Builds small but complete checkpoint dicts for the checkpoint and recovery tests."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import torch

from utils.config import ModelConfig, TrainingConfig
from utils.model import GPTModel
from utils.training.engine.checkpoint import FORMAT_VERSION

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=1, dropout_rate=0.0)

_BASE_TIME = datetime(2025, 11, 22, 6, 0, 0)


def make_state(step: int, val_loss: float | None, seed: int = 0, run_id: str | None = None,
               run_fingerprint: str | None = None) -> dict:
    """A DESIGN.md-shaped checkpoint dict for a one-layer model after `step` AdamW steps."""
    torch.manual_seed(seed)
    model = GPTModel(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    when = _BASE_TIME + timedelta(seconds=step)
    history = [{"step": s, "epoch": 0, "train_loss": 4.0, "val_loss": val_loss,
                "perplexity": None, "learning_rate": 1e-3, "tokens_seen": 64 * s,
                "elapsed_s": float(s), "timestamp": (_BASE_TIME + timedelta(seconds=s)).isoformat()}
               for s in range(1, step + 1)]
    return {
        "format_version": FORMAT_VERSION,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": {"last_epoch": step},
        "scaler_state_dict": None,
        "precision": {"name": "fp32", "requested": "auto", "device_type": "cpu",
                      "reason": "auto: fp32 on cpu"},
        "config": TINY.to_dict(),
        "training_config": TrainingConfig(max_steps=100).to_dict(),
        "epoch": 0,
        "global_step": step,
        "train_loss": 4.0 + step / 100,
        "val_loss": val_loss,
        "learning_rate": 1e-3,
        "timestamp": when.isoformat(),
        "metrics_history": history,
        "rng_state": {"python": list(random.getstate()[1]), "torch": torch.get_rng_state()},
        "data_state": {"seed": 0, "step": step, "batch_size": 2, "context_length": 16,
                       "world_size": 1},
        "tokenizer": "byte",
        "run_id": run_id,  # None: a checkpoint of the legacy run (written before runs)
        "run_fingerprint": run_fingerprint,
        "total_steps": 100,
        "data_identity": None,  # unknown (as in checkpoints written before it existed)
    }
