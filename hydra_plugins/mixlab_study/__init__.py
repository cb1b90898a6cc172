"""mixlab's study sweeper as Hydra finds plugins (``hydra_plugins.*``): ``hydra/sweeper=study``.

Hydra imports every module under ``hydra_plugins`` at start-up, for any application: this one stays
light, and the study's code (``mixlab.study.sweeper``) is imported only when a study runs.
"""
from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class StudySweeper(Sweeper):
    """``python -m mixlab.study DIR``: see ``mixlab.study.sweeper.Study``."""

    def __init__(self, max_batch_size: Any = None, params: Any = None) -> None:
        super().__init__()
        from mixlab.study.sweeper import Study

        self.study = Study()

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.study.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.study.sweep(arguments)
