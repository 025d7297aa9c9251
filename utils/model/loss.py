"""The output head and the cross-entropy in one pass, a block of rows at a time.

Training never needs all the logits at once: with a 50k vocabulary they are the largest
tensors of a step (batch x context x vocab floats, 412 MB at batch 8 x 256 x 50304), and
`lm_head` + `F.cross_entropy` writes and reads tensors of that size five times (the logits,
log_softmax, the zero-filled gradient of nll_loss, the gradient of log_softmax), each one a
fresh allocation the kernel page-faults into. On the CPU that was a fifth of a step
(bench/train.py). Here each block of rows gets its logits, its loss and, while the logits
are still in cache, their gradient softmax - onehot and its two products with the weight
and the hidden states. The maths is that of `F.cross_entropy(hidden @ weight.T, targets)`
(mean over the targets that are not `ignore_index`); only the summation order differs.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

ROWS_PER_BLOCK = 512  # 512 x 50304 floats = 103 MB of logits in flight; 256 and 1024 were slower


def _blockwise(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               ignore_index: int, with_grads: bool, vocab_size: int | None = None):
    """The mean loss, its valid-target count and, `with_grads`, the gradients of the
    *summed* loss with respect to `hidden` and `weight` (None otherwise). Rows of `weight`
    from `vocab_size` on are padding (aligned products on a GPU): their logits are set to
    -inf before the softmax, so they get no probability and a zero gradient."""
    # fp32 maths under autocast too, as `F.cross_entropy(logits.float(), ...)` would do
    with torch.autocast(hidden.device.type, enabled=False):
        x, w = hidden.float(), weight.float()
        rows = x.shape[0]
        valid = targets != ignore_index
        safe_targets = targets.masked_fill(~valid, 0).unsqueeze(1)
        losses = x.new_empty(rows)
        grad_x = torch.empty_like(x) if with_grads else None
        grad_w = torch.empty_like(w) if with_grads else None
        # one buffer for every block: a fresh 103 MB tensor per block would page-fault
        block = x.new_empty(min(rows, ROWS_PER_BLOCK), w.shape[0])
        for start in range(0, rows, ROWS_PER_BLOCK):
            end = min(rows, start + ROWS_PER_BLOCK)
            logits = block[: end - start]
            torch.mm(x[start:end], w.t(), out=logits)
            if vocab_size is not None and vocab_size < w.shape[0]:
                logits[:, vocab_size:] = -torch.inf
            torch._log_softmax(logits, -1, False, out=logits)  # in place, row by row
            losses[start:end] = -logits.gather(1, safe_targets[start:end]).squeeze(1)
            if with_grads:
                # d(sum of losses)/d(logits) = softmax - onehot(target), 0 on ignored rows
                probabilities = logits.exp_()
                probabilities.scatter_add_(1, safe_targets[start:end],
                                           torch.full_like(losses[start:end, None], -1.0))
                _zero_ignored_rows(probabilities, valid[start:end])
                torch.mm(probabilities, w, out=grad_x[start:end])
                # beta=0 on the first block: grad_w starts uninitialised
                grad_w.addmm_(probabilities.t(), x[start:end], beta=1.0 if start else 0.0)
        count = valid.sum()
        loss = losses.masked_fill(~valid, 0.0).sum() / count
    return loss.to(hidden.dtype), count, grad_x, grad_w


def _zero_ignored_rows(probabilities: torch.Tensor, valid: torch.Tensor) -> None:
    """Zero the gradient rows of ignored targets, in place.

    On a GPU (and under torch.compile) a masked fill over the block: no host sync, and
    traceable; eagerly on the CPU the rows are found first, because a pass over the whole
    [512, vocab] block costs more than the search.
    """
    if probabilities.is_cuda or torch.compiler.is_compiling():
        probabilities.masked_fill_(~valid.unsqueeze(1), 0.0)
    else:
        probabilities.index_fill_(0, (~valid).nonzero().squeeze(1), 0.0)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                ignore_index: int, vocab_size: int | None) -> torch.Tensor:
        loss, count, grad_x, grad_w = _blockwise(hidden, weight, targets, ignore_index, True,
                                                 vocab_size)
        ctx.save_for_backward(grad_x, grad_w, count)
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.backward_done = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.backward_done:
            raise RuntimeError("linear_cross_entropy supports one backward pass per forward "
                               "(its saved gradients are scaled in place); run the forward again")
        ctx.backward_done = True
        grad_x, grad_w, count = ctx.saved_tensors
        scale = grad_loss / count  # the loss is a mean over `count` targets
        hidden_dtype, weight_dtype = ctx.dtypes
        # In place: a fresh [vocab, d] product would cost its page faults again (bench/train.py)
        return (grad_x.mul_(scale).to(hidden_dtype), grad_w.mul_(scale).to(weight_dtype),
                None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, vocab_size: int | None = None) -> torch.Tensor:
    """`F.cross_entropy(hidden @ weight[:vocab_size].T, targets, ignore_index=...)` without
    materialising the logits; `hidden` is `[rows, d]`, `weight` `[vocab, d]` (rows from
    `vocab_size` on, if given, are padding that no probability reaches), `targets` `[rows]`."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, vocab_size)
    # no_grad (evaluation): the loss alone, a third of the work
    return _blockwise(hidden, weight, targets, ignore_index, with_grads=False,
                      vocab_size=vocab_size)[0]
