"""The trainer: `vrtrain run` (config, schedule, objectives, the loop, checkpoints, validation).

- `config`: `TrainConfig` (TOML, a comment per key, dotted `--set` overrides);
- `schedule`: `learning_rate(step, ...)`, a pure function of the step;
- `objectives`: `OBJECTIVES` (name -> function returning `LossTerms`), `masked_error`,
  `supervised_loss`;
- `build`: model, `--init`, parameter groups, optimizer, EMA, per-rank batch split;
- `setup`: what a run checks and opens before its first step (device, store, resume point, loaders);
- `loop`: `train(store, run_dir, config)`, the nanoGPT-style loop; `preempt`: SIGTERM/Ctrl-C;
- `state`: training checkpoints (atomic), resume state, best pointer, pruning;
- `validation`: fixed valid crops, the SDR hook; `runlog`: progress, logs, metrics, plots.
"""

from vr_model.train.config import TrainConfig, dump_config, load_config
from vr_model.train.loop import RunSummary, TrainingStopped, train
from vr_model.train.preempt import EXIT_PREEMPTED, TrainingInterrupted
from vr_model.train.objectives import OBJECTIVES, LossTerms, StepContext, masked_error, supervised_loss
from vr_model.train.schedule import learning_rate

__all__ = [
    "EXIT_PREEMPTED", "OBJECTIVES", "LossTerms", "RunSummary", "StepContext", "TrainConfig", "TrainingInterrupted",
    "TrainingStopped", "dump_config",
    "learning_rate", "load_config", "masked_error", "supervised_loss", "train",
]
