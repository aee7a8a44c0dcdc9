"""What the job progress bar shows: steps, ETA (worker's or estimated), losses, tokens per second."""

from __future__ import annotations

from forgeflow.cli.job_progress import JobWatch, format_duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def job(step, max_steps=100, status="Running", **extra):
    return {"status": status, "progress": {"step": step, "max_steps": max_steps, **extra}}


def test_eta_from_worker_when_given():
    w = JobWatch()
    w.update(job(10, eta_s=125.0), [])
    assert w.fields()["eta"] == "ETA 2:05" and w.fields()["steps"] == "step 10/100"


def test_eta_estimated_from_step_rate_otherwise():
    clock = Clock()
    w = JobWatch(clock=clock)
    w.update(job(0), [])
    assert w.eta_s() is None and w.fields()["eta"] == "ETA -"
    w.update(job(10), [])
    clock.t += 20  # 10 steps in 20 s -> 0.5 step/s
    w.update(job(20), [])
    assert w.eta_s() == 160.0
    w.update(job(100, status="Completed"), [])
    assert w.eta_s() == 0.0


def test_losses_and_tokens_per_second():
    w = JobWatch()
    rows = [{"step": 1, "train_loss": 2.5, "num_tokens": 100, "timestamp": 10.0},
            {"step": 2, "train_loss": 2.0, "num_tokens": 600, "timestamp": 12.0},
            {"step": 2, "eval_loss": 2.25, "timestamp": 12.5}]
    w.update(job(2), rows)
    assert w.fields()["stats"] == "loss 2.0000  eval 2.2500  250 tok/s"
    w.update(job(3), [{"step": 3, "train_loss": 1.5, "train_tokens_per_second": 1234.4, "timestamp": 13.0}])
    assert w.fields()["stats"] == "loss 1.5000  eval 2.2500  1,234 tok/s"


def test_format_duration():
    assert format_duration(59.6) == "1:00" and format_duration(3725) == "1:02:05"
