"""Training: the checkpoint layer and the `Trainer` on top of it, in `utils.training.engine`
(`from utils.training.engine.trainer import Trainer`; CLAUDE.md lists its modules
bottom-up). This package re-exports nothing.
"""
