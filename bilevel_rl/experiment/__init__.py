"""The experiment layer above :mod:`bilevel_rl.algorithms`: runs, configuration,
checkpoints, histories.

* :func:`run`: scan a solver for ``num_iters`` steps, batched over problems and
  seeds, fault-masked and resumable from checkpoints (:mod:`.runner`);
* :class:`RunConfig`, :func:`load_config`, :func:`make_config`: what ``bilevel-rl
  run`` executes, validated, by name (:mod:`.config`);
* :mod:`.checkpoint`: atomic, self-checking checkpoint files;
* :mod:`.history`: histories on disk (append-only segments, per-iteration batch
  statistics); :func:`load_history` reads one back.
"""

from bilevel_rl.experiment import checkpoint, history
from bilevel_rl.experiment.history import load_history
from bilevel_rl.experiment.runner import Progress, diverged_at, run

__all__ = ["Progress", "checkpoint", "diverged_at", "history", "load_history", "run"]
