"""`make bench`: every benchmark in turn."""

from __future__ import annotations

from bench import activation_maximization, attention, channels_last, explainers, faithfulness, fine_tuning, http_serving, \
    large_photos, model_agnostic, own_models, pointing_game, sweep
from bench.common import run_timed


def main() -> None:
    for module in (http_serving, large_photos, explainers, channels_last, own_models, model_agnostic, pointing_game, faithfulness,
                   fine_tuning, activation_maximization, attention, sweep):
        print(f"\n##### {module.__name__}")
        run_timed(module.main)


if __name__ == "__main__":
    main()
