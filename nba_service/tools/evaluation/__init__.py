"""``nba evaluate``: offline evaluation of the learned policy on a logged, randomised experiment.

The log is replayed through the real decision engine and learner with the
replay method, next to uniform random, each fixed action, the best fixed
action in hindsight and, when given, a targeting rule.

Modules: :mod:`~nba_service.tools.evaluation.logs` (reading the CSV log and the
shipped data sets), :mod:`~nba_service.tools.evaluation.rules` (the ``--rule``
mini-language), :mod:`~nba_service.tools.evaluation.replay` (the replay and
its figures) and :mod:`~nba_service.tools.evaluation.plots` (the learning curve).
"""

from nba_service.tools.evaluation.logs import DATASETS, LogFormatError, LoggedData, dataset_path, read_log
from nba_service.tools.evaluation.plots import plot_learning_curve
from nba_service.tools.evaluation.replay import Evaluation, ReplayConfig, evaluate, offer_ids, replay_policy
from nba_service.tools.evaluation.rules import TargetingRule, parse_rules

__all__ = [
    "DATASETS",
    "Evaluation",
    "LogFormatError",
    "LoggedData",
    "ReplayConfig",
    "TargetingRule",
    "dataset_path",
    "evaluate",
    "offer_ids",
    "parse_rules",
    "plot_learning_curve",
    "read_log",
    "replay_policy",
]
