"""The loop's progress, as a checkpoint stores it (``state.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field


def _zero_sums() -> list[float]:
    return [0.0, 0.0, 0.0]


@dataclass
class TrainState:
    """Where training is and what the current epoch has summed so far.

    ``epoch_sums`` are GLOBAL sums (already all-reduced): loss sum, rows, energy sum; the
    epoch loss is their ratio. ``history`` holds every reported metrics window."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_sums: list[float] = field(default_factory=_zero_sums)
    history: list[dict] = field(default_factory=list)

    def add_window(self, sums: list[float]) -> None:
        self.epoch_sums = [a + b for a, b in zip(self.epoch_sums, sums)]

    def epoch_loss(self) -> float:
        return self.epoch_sums[0] / max(1.0, self.epoch_sums[1])

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.epoch_sums = _zero_sums()

    def state_dict(self) -> dict:
        """JSON-able; the keys of ``state.json`` (the data position gains the lane plan
        where the checkpoint is written)."""
        return {
            "global_step": self.global_step,
            "data_position": {"epoch": self.epoch, "step": self.step_in_epoch},
            "epoch_sums": list(self.epoch_sums),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["data_position"]["epoch"])
        self.step_in_epoch = int(state["data_position"]["step"])
        self.global_step = int(state["global_step"])
        self.epoch_sums = [float(v) for v in state["epoch_sums"]]
        self.history = list(state["history"])
