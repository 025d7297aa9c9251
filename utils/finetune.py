"""Fine-tuning helpers: freeze parts of a loaded model and pick a lower learning rate.

Typical use after `load_pretrained_model(path, mode="train")`:

    report = freeze(model, embeddings=True, first_n_blocks=6)
    print(report)
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad),
                                  lr=suggested_finetune_lr(training_config.learning_rate))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from utils.model import count_parameters

# Fine-tuning moves pretrained weights a little; the step size that trained them from
# scratch would wash out what they learned. A tenth is the usual starting point (seed 000
# goes from 3e-4 to 1e-5 for full fine-tuning, a thirtieth).
FINETUNE_LR_FACTOR = 0.1


@dataclass
class FreezeReport:
    """What `freeze` did: the frozen parameter names and the counts (tied tensors once)."""

    frozen: list[str] = field(default_factory=list)
    frozen_parameters: int = 0
    trainable_parameters: int = 0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = self.frozen_parameters + self.trainable_parameters
        share = self.trainable_parameters / total if total else 0.0
        lines = [f"Frozen {len(self.frozen)} tensors ({self.frozen_parameters:,} parameters); "
                 f"trainable {self.trainable_parameters:,} of {total:,} ({share:.1%})"]
        lines += [f"  frozen: {name}" for name in self.frozen]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def freeze(model: nn.Module, embeddings: bool = True, first_n_blocks: int = 0,
           final_norm: bool = False) -> FreezeReport:
    """Set `requires_grad=False` on the chosen parts of a GPTModel; everything else trains.

    `embeddings`: token and position embeddings (the output head shares the token
    embedding, so it is frozen with it); `first_n_blocks`: the lowest transformer blocks,
    which hold the most general features; `final_norm`: the last LayerNorm.
    """
    blocks = len(getattr(model, "transformer_blocks", []))
    if not 0 <= first_n_blocks <= blocks:
        raise ValueError(f"first_n_blocks must be between 0 and {blocks} (the model's blocks), "
                         f"got {first_n_blocks}")
    prefixes = [f"transformer_blocks.{i}." for i in range(first_n_blocks)]
    if embeddings:
        prefixes += ["token_embedding.", "position_embedding."]
    if final_norm:
        prefixes.append("final_norm.")
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    report = FreezeReport()
    for name, parameter in model.named_parameters():  # unique: the tied head appears once
        if name.startswith(tuple(prefixes)):
            parameter.requires_grad_(False)
            report.frozen.append(name)
            report.frozen_parameters += parameter.numel()
        else:
            report.trainable_parameters += parameter.numel()
    head = getattr(getattr(model, "lm_head", None), "weight", None)
    if embeddings and head is not None and head is getattr(model.token_embedding, "weight", None):
        report.notes.append("lm_head.weight is tied to token_embedding.weight, so the output "
                            "head is frozen too")
    return report


def unfreeze(model: nn.Module) -> int:
    """Make every parameter trainable again; returns the number of parameters."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return count_parameters(model)


def suggested_finetune_lr(base_lr: float, factor: float = FINETUNE_LR_FACTOR) -> float:
    """A fine-tuning learning rate: `factor` (a tenth) of the rate used to pre-train."""
    if base_lr <= 0 or not 0 < factor <= 1:
        raise ValueError(f"need base_lr > 0 and 0 < factor <= 1, got {base_lr}, {factor}")
    return base_lr * factor
